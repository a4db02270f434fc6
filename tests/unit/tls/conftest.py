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
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tls import CertificateSource, DevCertPaths, server_context, write_dev_certificates

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


# -- certificates from a test CA, and servers for tls.ServerTLS ------------------------


@dataclass
class Leaf:
    """A certificate issued by the test CA, written as files a CertificateSource reads."""

    source: CertificateSource
    serial: int

    def rewrite(self, other: Leaf) -> None:
        """Put `other`'s certificate and key into this leaf's files (a rotation)."""
        self.source.cert_file.write_bytes(other.source.cert_file.read_bytes())
        self.source.key_file.write_bytes(other.source.key_file.read_bytes())
        self.serial = other.serial


@pytest.fixture
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def issue(tmp_path: Path, test_ca: trustme.CA) -> Callable[..., Leaf]:
    """issue(name, *hostnames, rsa=False, password=None, ca=None, **trustme kwargs)."""
    counter = iter(range(1_000_000))

    def _issue(name: str, *hostnames: str, rsa: bool = False, password: bytes | None = None,
               ca: trustme.CA | None = None, **kwargs) -> Leaf:
        key_type = trustme.KeyType.RSA if rsa else trustme.KeyType.ECDSA
        leaf = (ca or test_ca).issue_cert(*hostnames, key_type=key_type, **kwargs)
        folder = tmp_path / f"{name}-{next(counter)}"
        folder.mkdir()
        cert_file, key_file = folder / "cert.pem", folder / "key.pem"
        cert_file.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        key_pem = leaf.private_key_pem.bytes()
        if password is not None:
            key = serialization.load_pem_private_key(key_pem, None)
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        key_file.write_bytes(key_pem)
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        return Leaf(CertificateSource(name, cert_file, key_file), cert.serial_number)

    return _issue


@pytest.fixture
def client_for(test_ca: trustme.CA) -> Callable[..., ssl.SSLContext]:
    """A client context trusting the test CA (and TLS 1.2 only with tls12=True)."""

    def _client(tls12: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        test_ca.configure_trust(ctx)
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    return _client


@dataclass(frozen=True)
class Peer:
    serial: int
    version: str
    cipher: str
    greeting: bytes


@pytest.fixture
def peer_of() -> Callable[..., Awaitable[Peer]]:
    """peer_of(port, ctx, server_name): handshake and report the server's certificate."""
    return _peer_of


async def _peer_of(port: int, ctx: ssl.SSLContext, server_name: str | None) -> Peer:
    """Connect to 127.0.0.1:port with SNI `server_name` and report the server's certificate."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name),
        timeout=5,
    )
    try:
        greeting = await asyncio.wait_for(reader.readline(), timeout=5)
        tls_object = writer.get_extra_info("ssl_object")
        der = tls_object.getpeercert(binary_form=True)
        return Peer(
            serial=x509.load_der_x509_certificate(der).serial_number,
            version=tls_object.version(),
            cipher=tls_object.cipher()[0],
            greeting=greeting,
        )
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=2)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[ssl.SSLContext], Awaitable[int]]]:
    """serve(ctx) starts a greeting TLS server on 127.0.0.1 and returns its port."""
    servers: list[asyncio.Server] = []

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(GREETING)
            await writer.drain()
            await asyncio.wait_for(reader.read(1), timeout=5)  # until the client closes
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def _serve(ctx: ssl.SSLContext) -> int:
        server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield _serve
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
