"""Keep-alive connections to replicas, shared by every request of this gateway.

A thin owner of one aiohttp ClientSession: its connector pools HTTP/1.1 keep-alive
connections per replica address. Admission (router.admission) bounds how many requests
run at once, so the connector itself has no global limit. Responses are never
decompressed: bytes pass through as the model sent them.
"""

from __future__ import annotations

import aiohttp


class UpstreamPool:
    def __init__(self, *, keepalive_timeout_s: float = 30.0, connect_timeout_s: float = 2.0,
                 ssl_context=None) -> None:
        self._keepalive_timeout_s = keepalive_timeout_s
        self._ssl_context = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamPool.start() was not called")
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_timeout_s,
            enable_cleanup_closed=False,
            use_dns_cache=True,
            ssl=self._ssl_context if self._ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
