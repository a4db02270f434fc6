"""A raw TLS socket client that can send bytes no HTTP library would (the router and
upstream fixtures are in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import re
import ssl

import pytest



class RawClient:
    """Send raw bytes over TLS; read what comes back until the server closes (bounded)."""

    def __init__(self, certs, port: int) -> None:
        self._context = ssl.create_default_context(cafile=str(certs.ca_cert))
        self._port = port

    async def open(self, local_addr=None):
        return await asyncio.open_connection("127.0.0.1", self._port, ssl=self._context,
                                             server_hostname="localhost", local_addr=local_addr)

    async def exchange(self, data: bytes, timeout_s: float = 5.0) -> tuple[bytes, bool]:
        """(everything received, whether the server closed the connection)."""
        reader, writer = await self.open()
        writer.write(data)
        await writer.drain()
        received = b""
        closed = False
        try:
            async with asyncio.timeout(timeout_s):
                while chunk := await reader.read(65536):
                    received += chunk
            closed = True
        except (TimeoutError, ConnectionError, ssl.SSLError):
            closed = reader.at_eof()
        writer.close()
        return received, closed

    async def response(self, data: bytes, timeout_s: float = 5.0) -> bytes:
        """The first response to `data`, once its head and Content-Length body are in (for
        a test that does not care whether the server then closes or keeps the connection:
        exchange() would wait for the close or the timeout)."""
        reader, writer = await self.open()
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                assert length is not None, head
                return head + await reader.readexactly(int(length.group(1)))
        finally:
            writer.close()


@pytest.fixture
def raw(certs):
    return lambda router: RawClient(certs, router.port)
