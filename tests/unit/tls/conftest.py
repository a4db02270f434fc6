"""Fixtures for the tls tests: fresh development certificates and a tiny TLS server.

The server is a plain asyncio server using tls.server_context, the same way the router
listens, so these tests exercise real handshakes over 127.0.0.1 sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tls import DevCertPaths, server_context, write_dev_certificates

GREETING = b"hello over tls\n"


@dataclass(frozen=True)
class Negotiated:
    version: str
    cipher: str
    alpn: str | None
    greeting: bytes


@pytest.fixture
def dev_certs(tmp_path: Path) -> DevCertPaths:
    return write_dev_certificates(tmp_path / "dev-tls")


@pytest.fixture
async def tls_port(dev_certs: DevCertPaths) -> AsyncIterator[int]:
    """Port of a TLS server on 127.0.0.1 that greets each client and closes."""

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(GREETING)
            await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(
        greet, "127.0.0.1", 0, ssl=server_context(dev_certs.cert, dev_certs.key)
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def connect(tls_port: int) -> Callable[..., Awaitable[Negotiated]]:
    """Handshake with the test server and report what was negotiated."""

    async def _connect(ctx: ssl.SSLContext, server_hostname: str = "localhost") -> Negotiated:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", tls_port, ssl=ctx, server_hostname=server_hostname
            ),
            timeout=5,
        )
        try:
            greeting = await asyncio.wait_for(reader.readline(), timeout=5)
            tls_object = writer.get_extra_info("ssl_object")
            return Negotiated(
                version=tls_object.version(),
                cipher=tls_object.cipher()[0],
                alpn=tls_object.selected_alpn_protocol(),
                greeting=greeting,
            )
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)

    return _connect
