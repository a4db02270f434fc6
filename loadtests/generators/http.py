"""The one request every generator sends, and how its outcome is classified.

Both generators share this so that open- and closed-loop numbers differ only
in *when* requests start.  The session is tuned for measuring a server rather
than being a polite client: a fixed pool of keep-alive HTTP/1.1 connections
(`limit` = connections), no cookie jar, no decompression, bodies read fully
and discarded.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from dataclasses import dataclass

import aiohttp

try:  # the project's TLS policy (TLS 1.2+, hostname checks) when available
    from tls import client_context as _tls_client_context
except ImportError:  # pragma: no cover - only before tls grows client_context
    _tls_client_context = None

CONNECT, TIMEOUT, RESET, OTHER = "connect", "timeout", "reset", "other"
ERROR_KINDS = (CONNECT, TIMEOUT, RESET, OTHER)
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


@dataclass(frozen=True)
class Target:
    """What to send; picklable so worker processes get the same request."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    cafile: str | None = None
    timeout: float = 10.0

    def describe(self) -> str:
        return f"{self.method} {self.url}"


def client_ssl_context(cafile: str | None) -> ssl.SSLContext:
    if _tls_client_context is not None:
        return _tls_client_context(cafile)
    return ssl.create_default_context(cafile=cafile)


def make_session(target: Target, connections: int) -> aiohttp.ClientSession:
    """A session whose pool holds at most `connections` keep-alive connections."""
    ssl_arg: ssl.SSLContext | bool = True
    if target.url.lower().startswith("https:"):
        ssl_arg = client_ssl_context(target.cafile)
    connector = aiohttp.TCPConnector(
        limit=max(1, connections), limit_per_host=0, ssl=ssl_arg,
        keepalive_timeout=max(30.0, target.timeout), force_close=False,
        enable_cleanup_closed=False)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=target.timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        version=aiohttp.HttpVersion11,
        raise_for_status=False,
    )


def classify_error(exc: BaseException) -> str:
    """Map a client exception to connect / timeout / reset / other."""
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return CONNECT
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                        ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return RESET
    if isinstance(exc, OSError) and exc.errno in _RESET_ERRNOS:
        return RESET
    if isinstance(exc, ConnectionRefusedError):
        return CONNECT
    return OTHER


async def send_one(session: aiohttp.ClientSession, target: Target
                   ) -> tuple[int | None, str | None, str | None]:
    """Send the target request once: (status, None, None) or (None, kind, message)."""
    try:
        async with session.request(target.method, target.url, headers=target.headers or None,
                                   data=target.body, allow_redirects=False) as resp:
            await resp.read()
            return resp.status, None, None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # every failure is counted by kind, none escapes
        text = str(exc)
        name = type(exc).__name__
        return None, classify_error(exc), (f"{name}: {text}" if text else name)[:300]


# Logged by the event loop when a request timed out or was cancelled while its
# TLS connection was still flushing: already counted as that request's error.
_TEARDOWN_NOISE = ("Fatal error on SSL protocol", "SSL error in data received",
                   "Fatal error on transport")


def _quiet_teardown(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    if str(context.get("message", "")).startswith(_TEARDOWN_NOISE):
        return
    loop.default_exception_handler(context)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when available (faster timers and sockets), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    loop.set_exception_handler(_quiet_teardown)
    return loop
