"""A real router (TLS on loopback) in front of a recording upstream, plus a raw TLS
socket client that can send bytes no HTTP library would."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from router import RouterApp, RouterSettings, RoutingTableHolder
from tests.fakes.recording_upstream import RecordingUpstream
from tests.functional.router_harness import assert_idle, deployment, table
from tls import ensure_dev_certificates, server_context


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return ensure_dev_certificates(tmp_path_factory.mktemp("security-tls"))


@pytest.fixture
async def upstream():
    server = await RecordingUpstream().start()
    yield server
    await server.close()


@pytest.fixture
async def make_router(certs, upstream):
    routers = []

    async def make(**settings) -> RouterApp:
        router = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key), **settings),
                           RoutingTableHolder(table(deployment("blue", [upstream.port],
                                                               max_concurrent_requests_per_instance=64))))
        await router.start()
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.drain(2)
        assert_idle(router)
        await router.close()


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


@pytest.fixture
def raw(certs):
    return lambda router: RawClient(certs, router.port)
