"""InternalCA: creating and reusing the CA, issuing short-lived replica and router
certificates, and router→replica mutual TLS over real handshakes."""

from __future__ import annotations

import asyncio
import ssl
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tls import CertificateSource, InternalCA, ServerTLS, client_context, server_context

NOW = datetime.now(timezone.utc)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_created_once_and_kept(tmp_path: Path) -> None:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    again = InternalCA.load_or_create(tmp_path / "ca")
    assert again.certificate == ca.certificate
    assert again.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    (tmp_path / "ca" / "ca-key.pem").write_text("broken\n")
    assert InternalCA.load_or_create(tmp_path / "ca").certificate != ca.certificate
    # Close to its own expiry the CA is replaced as well.
    later = InternalCA.load_or_create(tmp_path / "ca", now=NOW + timedelta(days=5 * 365 - 10))
    assert later.certificate != ca.certificate


def test_issued_certificates_are_short_lived_and_reused(tmp_path: Path) -> None:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    files = ca.ensure_server_files(tmp_path / "replica", ["127.0.0.1", "replica-1.local"])
    assert files.reissued
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.ca.read_bytes() == ca.cert_file.read_bytes()
    leaf = _cert(files.cert)
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=2, minutes=5)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    assert not ca.ensure_server_files(tmp_path / "replica", ["127.0.0.1"]).reissued  # a subset
    assert ca.ensure_server_files(tmp_path / "replica", ["10.0.0.9"]).reissued  # a new name
    late = NOW + timedelta(days=1, hours=12)  # less than a third of its life left
    renewed = ca.ensure_server_files(tmp_path / "replica", ["10.0.0.9"], now=late)
    assert renewed.reissued and renewed.not_after > late + timedelta(days=1)

    client = ca.ensure_client_files(tmp_path / "router")
    eku = _cert(client.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # Files issued by another CA are replaced.
    other = InternalCA.load_or_create(tmp_path / "other-ca")
    assert other.ensure_client_files(tmp_path / "router").reissued
    _cert(client.cert).verify_directly_issued_by(other.certificate)


async def _talk(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), timeout=5
    )
    try:
        return await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()


async def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    try:
        return await _talk(port, ctx) == b""
    except (ssl.SSLError, ConnectionError):
        return True


async def test_router_to_replica_mtls(tmp_path: Path, serve, dev_certs) -> None:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    replica = ca.ensure_server_files(tmp_path / "replica", ["127.0.0.1"])
    router = ca.ensure_client_files(tmp_path / "router")
    port = await serve(ca.server_context(replica))

    assert await _talk(port, ca.client_context(router)) == b"hello over tls\n"
    assert await _refused(port, client_context(ca.cert_file))  # no client certificate
    # A replica's server certificate is not a client certificate (extended key usage).
    assert await _refused(port, client_context(ca.cert_file, cert_file=replica.cert, key_file=replica.key))
    # And the router trusts only the internal CA, not, say, the development CA.
    dev_port = await serve(server_context(dev_certs.cert, dev_certs.key))
    with pytest.raises(ssl.SSLCertVerificationError):
        await _talk(dev_port, ca.client_context(router))


async def test_replica_can_rotate_with_server_tls(tmp_path: Path, serve) -> None:
    """A replica serving through ServerTLS picks up the reissued files without a restart."""
    ca = InternalCA.load_or_create(tmp_path / "ca")
    replica = ca.ensure_server_files(tmp_path / "replica", ["127.0.0.1"])
    server = ServerTLS([CertificateSource("replica", replica.cert, replica.key)], client_ca_file=replica.ca)
    port = await serve(server.context)
    router = ca.client_context(ca.ensure_client_files(tmp_path / "router"))
    assert await _talk(port, router)
    old = server.certificates["replica"].serial
    assert ca.ensure_server_files(tmp_path / "replica", ["127.0.0.1", "replica-2.local"]).reissued
    assert server.reload()[0].outcome == "reloaded"
    assert server.certificates["replica"].serial != old
    assert await _talk(port, router)
