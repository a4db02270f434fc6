"""Accept: the scoring port's listening socket, its connections and their limits.

Each connection is a router.http1.HttpConnection (our HTTP/1.1 server protocol on
httptools), which refuses malformed requests before any handler (400/414/431 JSON
bodies, the connection closed) and gives the first request's head `header_timeout_s`
to arrive (slowloris: 408; with TLS the handshake must be done by then too). The
listening socket is plain TCP: each connection terminates its own TLS
(router.tls_termination), reading through the listener's shared buffers. This module
adds, per listener:
- at most `max_connections` connections at once (extra ones are closed at once, before
  any TLS handshake), and
  at most `max_requests_per_connection` requests on one connection (the connection
  enforces it; the limits live here);
- every refusal counted through `on_refusal(reason)`, logged at debug, never a
  traceback per attacker request;
- the hand-over of paths served by aiohttp routes (`extra_routes`, e.g. batch jobs)
  to an aiohttp connection handler, with a JSON 404 for their unknown paths;
- start / drain: stop accepting, close idle connections, let requests being answered
  finish within the timeout, then cancel the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import ssl
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web

from tls.metrics import handshake_counts

from .aiohttp_hardening import app_runner
from .http1 import HttpConnection, ReadBuffer

log = logging.getLogger("scoregate.router.listener")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 20000
    max_requests_per_connection: int = 10000
    header_timeout_s: float = 10.0
    max_line_size: int = 8190  # request line
    max_field_size: int = 8190  # one header
    max_headers: int = 100


def ensure_open_files(wanted: int) -> int:
    """Raise this process's soft limit of open files toward `wanted` (at most the hard
    limit) and return the soft limit in force. Every connection holds a descriptor, and a
    default soft limit (often 1,024) would refuse callers long before max_connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft


_ENCODED_OCTET = re.compile(r"%[0-9A-Fa-f]{2}")


def routing_path(raw_path: str) -> str:
    """The path routes are matched on: percent-decoded, except an encoded '/' or '%'
    (which would change the segments) — as aiohttp's router matches."""
    if "%" not in raw_path:
        return raw_path
    return _ENCODED_OCTET.sub(lambda m: m.group(0) if m.group(0).lower() in ("%2f", "%25")
                              else unquote(m.group(0)), raw_path)


class _Refuse(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class Listener:
    """The scoring port. `handler(request)` answers every request not handed over: at once
    (returning None) or through the awaitable it returns."""

    def __init__(self, handler, *, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 limits: ConnectionLimits, keepalive_timeout_s: float, backlog: int = 1024,
                 extra_routes: list[web.RouteDef] | None = None, not_found=None,
                 client_max_size: int = 1024 ** 2, on_refusal=None, on_refusal_answered=None,
                 reuse_port: bool = False) -> None:
        self.handler = handler
        self.limits = limits
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connections: set[HttpConnection] = set()
        self.read_buffer = ReadBuffer()
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ssl_context = ssl_context  # TLS is terminated by each connection (router.tls_termination)
        self.handshakes = None  # where the connections count their handshakes (tls.metrics)
        self._host, self._port, self._backlog = host, port, backlog
        self._reuse_port = reuse_port  # `serve --workers`: several processes on one port
        self._on_refusal = on_refusal or (lambda reason: None)
        # (refusal, request id, remote, bytes sent): an answer made before any handler ran
        self._on_refusal_answered = on_refusal_answered or (lambda *answer: None)
        self._server: asyncio.AbstractServer | None = None
        # aiohttp serves the extra routes; the path prefixes that go there.
        self._extra_routes = list(extra_routes or [])
        self._prefixes = tuple(route.path.split("{", 1)[0] for route in self._extra_routes)
        self._not_found = not_found
        self._client_max_size = client_max_size
        self._aiohttp: web.AppRunner | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("router is not listening")
        return self._server.sockets[0].getsockname()[1]

    def refused(self, reason: str) -> None:
        self._on_refusal(reason)

    def refusal_answered(self, refusal, request_id: str, remote: str | None, bytes_out: int) -> None:
        """A refusal the connection answered itself, no handler having seen the request (a
        malformed or slow head): recorded and logged like every other answer."""
        self._on_refusal_answered(refusal, request_id, remote, bytes_out)

    def hands_over(self, raw_path: str) -> bool:
        """True when an aiohttp route serves this path."""
        if not self._prefixes:
            return False
        path = routing_path(raw_path)
        if not path.startswith(self._prefixes):
            return False
        for prefix, route in zip(self._prefixes, self._extra_routes):
            if path.startswith(prefix) if "{" in route.path else path == prefix:
                return True
        return False

    def aiohttp_protocol(self) -> asyncio.Protocol:
        return self._aiohttp.server()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.ssl_context is not None:
            self.handshakes = handshake_counts(self.ssl_context)  # metrics are attached by now
        if self._extra_routes:
            app = web.Application(client_max_size=self._client_max_size)
            routes = list(self._extra_routes)
            if self._not_found is not None:
                routes.append(web.route("*", "/{tail:.*}", self._not_found))
            app.add_routes(routes)
            # A caller that disconnects cancels its request there too.
            self._aiohttp = app_runner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                                       keepalive_timeout=self.keepalive_timeout_s)
            await self._aiohttp.setup()
        self._server = await self.loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog, reuse_address=True,
            reuse_port=self._reuse_port or None)

    def _protocol(self) -> asyncio.Protocol:
        if len(self.connections) >= self.limits.max_connections:
            self.refused("max_connections")
            return _Refuse()
        return HttpConnection(self)

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, close idle connections, let requests being answered finish
        within timeout_s (their connections close after the answer), cancel the rest."""
        if self._server is None:
            return
        self._server.close()
        self.draining = True
        await asyncio.sleep(0)  # connections accepted just before the close get their protocol
        for conn in list(self.connections):
            conn.close_when_idle()
        waits = [asyncio.ensure_future(conn.wait_idle()) for conn in self.connections if conn.busy]
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
            for wait in waits:
                wait.cancel()
        for conn in list(self.connections):
            conn.cancel()
        self.connections.clear()
        if self._aiohttp is not None:
            self._aiohttp._shutdown_timeout = timeout_s  # noqa: SLF001 (no public setter)
            await self._aiohttp.cleanup()
            self._aiohttp = None
        self._server = None
