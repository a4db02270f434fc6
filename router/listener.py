"""Accept: the HTTPS listener and the limits enforced before a request reaches a handler.

aiohttp's HTTP parser (llhttp, strict) already refuses malformed framing: both
Content-Length and Transfer-Encoding, duplicate or signed lengths, unknown or
obfuscated transfer codings, bad chunk sizes and extensions, bare LF, obsolete line
folding, NUL/CR/LF in values, non-token methods. This module adds what a gateway facing
the internet needs on top, per connection:
- every refusal of the parser is a JSON body (`code`, `message`, `request_id`) with
  the right status — 414 request line too long, 431 headers too large or too many,
  400 otherwise — and the connection is closed; logged at debug, counted, never a
  traceback per attacker request;
- a connection must deliver its first request's headers within `header_timeout_s`
  (slowloris), else it gets 408 and is closed; later requests on a kept-alive
  connection are bounded by the keep-alive timeout;
- at most `max_connections` connections at once (extra ones are closed at once), and
  at most `max_requests_per_connection` requests on one connection.
The aiohttp classes are extended here and only here (`RequestHandler.handle_error`,
the `Server` protocol factory); tests/security exercise every point over raw sockets.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import uuid
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

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


def _json_error(status: int, code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message, "request_id": str(uuid.uuid4())})


class GatewayRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the gateway's refusals and first-request deadline."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limits: ConnectionLimits = self._manager.limits  # type: ignore[attr-defined]
        self._header_timer = self._loop.call_later(limits.header_timeout_s, self._on_header_timeout)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None and self._request_count:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        transport = self.transport
        if self._request_count or transport is None or transport.is_closing():
            return
        self._manager.refused("header_timeout")  # type: ignore[attr-defined]
        body = _json_error(408, "ClientRequestTimeout", "the request headers did not arrive in time")
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.force_close()
        transport.close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status != 400 or exc is None:
            return super().handle_error(request, status, exc, message)
        text = str(getattr(exc, "message", "") or exc).splitlines()[0][:200]
        status, code = 400, "BadRequest"
        if isinstance(exc, LineTooLong):
            # The parser reports which line: the request line (URL) or a header.
            if self._looks_like_url(exc):
                status, code = 414, "UriTooLong"
            else:
                status, code = 431, "RequestHeaderFieldsTooLarge"
        elif "too many headers" in text.lower():
            status, code = 431, "RequestHeaderFieldsTooLarge"
        self._manager.refused(f"http_{status}")  # type: ignore[attr-defined]
        log.debug("refused a malformed request from %s: %s", request.remote, text)
        response = web.Response(status=status, body=_json_error(status, code, f"malformed request: {text}"),
                                content_type="application/json")
        response.force_close()
        return response

    @staticmethod
    def _looks_like_url(exc: LineTooLong) -> bool:
        # llhttp's URL callback hands over a bytearray, its header callbacks bytes.
        return "bytearray(" in str(exc)

    def should_close_after(self) -> bool:
        """True when this connection has served its last allowed request."""
        return self._request_count >= self._manager.limits.max_requests_per_connection  # type: ignore[attr-defined]


class GatewayServer(Server):
    """aiohttp's Server (the protocol factory) with a cap on open connections."""

    limits: ConnectionLimits
    on_refusal = staticmethod(lambda reason: None)

    def refused(self, reason: str) -> None:
        self.on_refusal(reason)

    def __call__(self) -> RequestHandler:
        if len(self.connections) >= self.limits.max_connections:
            self.refused("max_connections")
            return _Refuse()  # type: ignore[return-value]
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class _Refuse(asyncio.Protocol):
    """A connection over the limit: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class GatewayRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits: ConnectionLimits, on_refusal=None, **kwargs) -> None:
        super().__init__(app, max_line_size=limits.max_line_size, max_field_size=limits.max_field_size,
                         max_headers=limits.max_headers, **kwargs)
        self._limits = limits
        self._on_refusal = on_refusal or (lambda reason: None)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = GatewayServer  # same state, our protocol factory
        server.limits = self._limits
        server.on_refusal = self._on_refusal
        return server
