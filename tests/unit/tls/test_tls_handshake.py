"""Real handshakes against tls.server_context: who gets in, and with what."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest

from tls import DevCertPaths, client_context, write_dev_certificates

OPENSSL = "/usr/bin/openssl"


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
async def test_client_trusting_dev_ca_connects(
    connect, dev_certs: DevCertPaths, hostname: str
) -> None:
    got = await connect(client_context(cafile=dev_certs.ca_cert), server_hostname=hostname)
    assert got.greeting == b"hello over tls\n"
    assert got.version == "TLSv1.3"
    assert got.alpn == "http/1.1"


async def test_wrong_hostname_is_rejected_by_client(connect, dev_certs: DevCertPaths) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await connect(client_context(cafile=dev_certs.ca_cert), server_hostname="example.com")


async def test_other_ca_is_not_trusted(connect, tmp_path: Path) -> None:
    other = write_dev_certificates(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await connect(client_context(cafile=other.ca_cert))


async def test_tls12_client_offering_everything_gets_ecdhe_aead(
    connect, dev_certs: DevCertPaths
) -> None:
    ctx = ssl.create_default_context(cafile=dev_certs.ca_cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # offers RSA key exchange and CBC suites too
    got = await connect(ctx)
    assert got.version == "TLSv1.2"
    assert got.cipher.startswith("ECDHE-"), got.cipher
    assert "GCM" in got.cipher or "CHACHA20" in got.cipher, got.cipher


async def test_tls11_client_is_refused(connect, dev_certs: DevCertPaths) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(dev_certs.ca_cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is deprecated
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # so this client really sends a TLS 1.1 hello
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(ctx)


async def test_alpn_picks_http11_over_h2(connect, dev_certs: DevCertPaths) -> None:
    ctx = ssl.create_default_context(cafile=dev_certs.ca_cert)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    assert (await connect(ctx)).alpn == "http/1.1"


async def _s_client(port: int, ca: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-CAfile", str(ca), "-verify_return_error", "-tls1_2", *extra,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.skipif(not os.access(OPENSSL, os.X_OK), reason="needs the openssl command")
async def test_openssl_static_rsa_cbc_cipher_is_refused(
    tls_port: int, dev_certs: DevCertPaths
) -> None:
    # AES128-SHA: RSA key exchange (no forward secrecy) and CBC with HMAC (not AEAD).
    code, out = await _s_client(tls_port, dev_certs.ca_cert, "-cipher", "AES128-SHA")
    assert code != 0, out
    assert "Cipher is (NONE)" in out, out
    # Same command with openssl's default offer succeeds, so the cipher is the reason.
    code, out = await _s_client(tls_port, dev_certs.ca_cert)
    assert code == 0, out
    assert "Cipher is ECDHE-" in out and "Verify return code: 0 (ok)" in out, out
