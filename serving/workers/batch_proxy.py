"""Batch job routes of the scoring port, in a worker: passed on to the main process.

Batch jobs live in the main process (one store, one job runner), but with
`--workers N` a caller's connection lands on any worker. A worker therefore answers
`/api/v1/batch/...` by forwarding the request, as it came (method, path and query,
headers but the hop-by-hop ones, body streamed), to the main process's batch routes on
a Unix socket only the gateway's user can open, and streams the answer back. The main
process authenticates it exactly as when it serves the scoring port itself; the caller's
address goes with it (CLIENT_ADDRESS_HEADER, a caller's own copy dropped), so the
failed-auth throttle there counts each caller, not the worker.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from router.context import request_id_from
from router.handlers import error_response
from router.upstream.headers import HOP_BY_HOP

from ..batch.http import CLIENT_ADDRESS_HEADER

log = logging.getLogger("scoregate.workers")

_CHUNK = 64 * 1024
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", CLIENT_ADDRESS_HEADER}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "date", "server"}


class BatchProxy:
    def __init__(self, socket_path: str, timeout_s: float = 300.0) -> None:
        self._socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5.0)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self._socket_path, limit=64), timeout=self._timeout,
            auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/api/v1/batch/{tail:.*}", self.forward)]

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED]
        if request.remote:
            headers.append((CLIENT_ADDRESS_HEADER, request.remote))
        body = request.content.iter_chunked(_CHUNK) if request.can_read_body else None
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                    request.method, f"http://scoregate{request.rel_url.raw_path_qs}", headers=headers,
                    data=body, allow_redirects=False, skip_auto_headers=("User-Agent", "Accept",
                                                                        "Accept-Encoding")) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.raw_headers:
                    if name.decode("latin-1").lower() not in _NOT_RETURNED:
                        response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            if response is not None and response.prepared:
                raise  # part of the answer is out: the connection is cut, the caller sees it
            request_id = request_id_from(request.headers.get("x-request-id"))
            log.warning("batch request %s could not reach the main process: %s", request_id, exc)
            return error_response(503, "BatchUnavailable", "batch jobs are not reachable right now; retry",
                                  request_id)
