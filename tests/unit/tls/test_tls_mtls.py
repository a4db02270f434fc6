"""Client certificates (mTLS) on a ServerTLS listener: who gets in, per SNI certificate,
and a rotated client CA bundle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry

from tls import ServerTLS, TLSMetrics

OPENSSL = "/usr/bin/openssl"


@pytest.fixture
def clients_ca() -> trustme.CA:
    return trustme.CA(organization_name="client CA")


@pytest.fixture
def ca_bundle(tmp_path: Path, clients_ca: trustme.CA) -> Path:
    path = tmp_path / "clients-ca.pem"
    clients_ca.cert_pem.write_to_path(str(path))
    return path


def _with_cert(ctx: ssl.SSLContext, ca: trustme.CA, name: str) -> ssl.SSLContext:
    ca.issue_cert(f"{name}@clients.test").configure_cert(ctx)
    return ctx


async def _greeting(port: int, ctx: ssl.SSLContext, server_name: str) -> bytes:
    """The server's greeting; raises (or returns b"") when the server refused us."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name), timeout=5
    )
    try:
        return await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=2)


async def _refused(port: int, ctx: ssl.SSLContext, server_name: str) -> bool:
    try:
        return await _greeting(port, ctx, server_name) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
async def test_client_certificates_required(
    issue, ca_bundle, clients_ca, serve, client_for, tls12
) -> None:
    registry = CollectorRegistry()
    api, other = issue("api", "api.test"), issue("other", "other.test")
    server = ServerTLS([api.source, other.source], client_ca_file=ca_bundle, metrics=TLSMetrics(registry))
    assert server.context.verify_mode == ssl.CERT_REQUIRED
    port = await serve(server.context)
    for name in ("api.test", "other.test"):  # the default and an SNI-switched certificate
        assert await _greeting(port, _with_cert(client_for(tls12), clients_ca, "ok"), name)
        assert await _refused(port, client_for(tls12), name)  # no certificate at all
        stranger = _with_cert(client_for(tls12), trustme.CA(), "stranger")
        assert await _refused(port, stranger, name)  # a certificate from another CA
    version = "TLSv1.2" if tls12 else "TLSv1.3"
    counts = {
        outcome: registry.get_sample_value(
            "scoregate_tls_handshakes_total", {"listener": "https", "version": v, "outcome": outcome}
        )
        for outcome, v in (("ok", version), ("client_certificate", "unknown"))
    }
    assert counts == {"ok": 2, "client_certificate": 4}


async def test_rotated_client_ca_bundle(issue, ca_bundle, clients_ca, serve, client_for) -> None:
    api = issue("api", "api.test")
    server = ServerTLS([api.source], client_ca_file=ca_bundle)
    port = await serve(server.context)
    new_ca = trustme.CA(organization_name="next client CA")
    new_ca.cert_pem.write_to_path(str(ca_bundle))
    assert [r.outcome for r in server.reload()] == ["reloaded"]
    assert await _greeting(port, _with_cert(client_for(), new_ca, "new"), "api.test")
    assert await _refused(port, _with_cert(client_for(), clients_ca, "old"), "api.test")


async def _s_client(port: int, ca: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.test",
        "-CAfile", str(ca), "-verify_return_error", *extra,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    # stdin stays open until the server has had its say: its greeting, or a refusal that
    # ends s_client (with TLS 1.3 it comes after the client has finished its handshake).
    out = b""
    async with asyncio.timeout(10):
        while b"hello over tls" not in out:
            chunk = await proc.stdout.read(4096)
            if not chunk:
                break
            out += chunk
        rest, _ = await proc.communicate(b"")
    return proc.returncode, (out + rest).decode(errors="replace")


@pytest.mark.skipif(not os.access(OPENSSL, os.X_OK), reason="needs the openssl command")
async def test_openssl_s_client_with_and_without_certificate(
    issue, ca_bundle, clients_ca, serve, test_ca, tmp_path
) -> None:
    api = issue("api", "api.test")
    port = await serve(ServerTLS([api.source], client_ca_file=ca_bundle).context)
    server_ca = tmp_path / "server-ca.pem"
    test_ca.cert_pem.write_to_path(str(server_ca))
    leaf = clients_ca.issue_cert("s_client@clients.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))

    code, out = await _s_client(port, server_ca, "-cert", str(cert), "-key", str(key))
    assert code == 0 and "hello over tls" in out, out
    code, out = await _s_client(port, server_ca, "-tls1_2")
    assert code != 0 and "hello over tls" not in out, out
    # TLS 1.3: the client finishes its side first; the server then refuses it and
    # closes (asyncio drops OpenSSL's alert, so s_client reports an EOF, not the alert).
    code, out = await _s_client(port, server_ca, "-tls1_3")
    assert "hello over tls" not in out, out
    assert "certificate required" in out or "unexpected eof" in out, out
