"""Keep-alive connections to replicas, shared by every request of this gateway.

Scoring requests go over router.upstream.connection: idle connections wait per replica
address in a stack (the most recently used is taken first: it is the least likely to
have been closed by the replica's own keep-alive timeout, and the others age out). One
sweep per second closes connections idle longer than `keepalive_timeout_s` — kept
shorter than model servers' own (75 s for ours and for gunicorn-based servers), so a
replica rarely closes a connection the gateway is about to use. Admission
(router.admission) bounds how many requests run at once, so the pool has no global
limit of its own; the idle stack of one replica is capped.

Health probes and mirrored copies, off the caller's path, use an aiohttp session
(`session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import aiohttp

from ..routing_table import Replica
from .connection import UpstreamConnection

MAX_IDLE_PER_REPLICA = 512


class ConnectFailed(Exception):
    """No connection could be opened: nothing was sent."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class UpstreamPool:
    def __init__(self, *, keepalive_timeout_s: float = 30.0, connect_timeout_s: float = 2.0,
                 ssl_context=None) -> None:
        self._keepalive_timeout_s = keepalive_timeout_s
        self._ssl_context = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._idle: dict[tuple, list[UpstreamConnection]] = {}
        self._sweeper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.opened = 0  # connections opened since start (tests and metrics read it)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamPool.start() was not called")
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=self._keepalive_timeout_s,
            enable_cleanup_closed=False, use_dns_cache=True,
            ssl=self._ssl_context if self._ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for stack in self._idle.values():
            for conn in stack:
                conn.abort()
        self._idle.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def idle_count(self, replica: Replica) -> int:
        return len(self._idle.get(replica.pool_key, ()))

    def take_idle(self, replica: Replica) -> UpstreamConnection | None:
        """An idle open connection to `replica`, or None (no await: the usual case)."""
        stack = self._idle.get(replica.pool_key)
        while stack:
            conn = stack.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    async def connect(self, replica: Replica, *, fresh: bool = False) -> UpstreamConnection:
        """A new connection to `replica` (ConnectFailed), for when take_idle() had none;
        `fresh`: the replica closed one under us, so its idle ones are closed first."""
        if fresh:
            self.discard_idle(replica)
        return await self._connect(replica.pool_key, replica)

    def release(self, conn: UpstreamConnection) -> None:
        """Take a connection back after an exchange (closing it unless it is reusable)."""
        if not conn.finish():
            return
        stack = self._idle.setdefault(conn.key, [])
        if len(stack) >= MAX_IDLE_PER_REPLICA:
            conn.abort()
            return
        conn.idle_since = (self._loop or asyncio.get_running_loop()).time()
        stack.append(conn)

    def discard_idle(self, replica: Replica) -> None:
        """Close every idle connection to `replica` (it closed one under us: the others
        were opened to the same process and are likely stale too)."""
        stack = self._idle.pop(replica.pool_key, None)
        for conn in stack or ():
            conn.abort()

    async def _connect(self, key: tuple, replica: Replica) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        tls = self._ssl_context if replica.scheme == "https" else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(key), replica.host, replica.port,
                    ssl=tls, server_hostname=replica.host if tls is not None else None)
        except TimeoutError:
            raise ConnectFailed("connect_timeout") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"tls:{type(exc).__name__}") from None
        except OSError as exc:
            raise ConnectFailed(type(exc).__name__) from None
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.opened += 1
        return conn

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            oldest_allowed = loop.time() - self._keepalive_timeout_s
            for key in list(self._idle):
                keep = []
                for conn in self._idle[key]:
                    if conn.usable() and conn.idle_since >= oldest_allowed:
                        keep.append(conn)
                    else:
                        conn.abort()
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
