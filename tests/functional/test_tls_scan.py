"""An sslyze scan of an aiohttp server using ServerTLS must find nothing below the
policy: no SSL 2/3 or TLS 1.0/1.1, only forward-secret AEAD suites on TLS 1.2, no
compression, no client-initiated or insecure renegotiation; resumption works.

The scan uses an RSA certificate on purpose: with RSA, a server that still allowed
static-RSA key exchange or CBC suites would accept them, so their absence means the
policy refused them (with an ECDSA key they could never be negotiated anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tls import CertificateSource, ServerTLS

sslyze = pytest.importorskip("sslyze", reason="sslyze is a test dependency (pip install sslyze)")
from sslyze import (  # noqa: E402
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    Scanner,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
    TlsResumptionSupportEnum,
)

REFUSED_VERSIONS = {
    "ssl_2_0_cipher_suites": ScanCommand.SSL_2_0_CIPHER_SUITES,
    "ssl_3_0_cipher_suites": ScanCommand.SSL_3_0_CIPHER_SUITES,
    "tls_1_0_cipher_suites": ScanCommand.TLS_1_0_CIPHER_SUITES,
    "tls_1_1_cipher_suites": ScanCommand.TLS_1_1_CIPHER_SUITES,
}


@contextlib.asynccontextmanager
async def https_server(ctx: ssl.SSLContext) -> AsyncIterator[int]:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.add_routes([web.get("/", hello)])
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _scan(port: int, server_name: str):
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(server_name, port, ip_address="127.0.0.1"),
        network_configuration=ServerNetworkConfiguration(server_name, network_timeout=5),
        scan_commands={
            *REFUSED_VERSIONS.values(),
            ScanCommand.TLS_1_2_CIPHER_SUITES,
            ScanCommand.TLS_1_3_CIPHER_SUITES,
            ScanCommand.TLS_COMPRESSION,
            ScanCommand.SESSION_RENEGOTIATION,
            ScanCommand.SESSION_RESUMPTION,
        },
    )
    scanner = Scanner(per_server_concurrent_connections_limit=8)
    scanner.queue_scans([request])
    [result] = list(scanner.get_results())
    return result


async def test_sslyze_finds_nothing_below_the_policy(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("rsa.test", key_type=trustme.KeyType.RSA)
    source = CertificateSource("rsa", tmp_path / "rsa.pem", tmp_path / "rsa-key.pem")
    source.cert_file.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    source.key_file.write_bytes(leaf.private_key_pem.bytes())
    server = ServerTLS([source])

    async with https_server(server.context) as port:
        result = await asyncio.wait_for(asyncio.to_thread(_scan, port, "rsa.test"), timeout=60)
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    scan = result.scan_result
    for name in (*REFUSED_VERSIONS, "tls_1_2_cipher_suites", "tls_1_3_cipher_suites",
                 "tls_compression", "session_renegotiation", "session_resumption"):
        attempt = getattr(scan, name)
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (name, attempt.error_trace)

    for name in REFUSED_VERSIONS:
        accepted = getattr(scan, name).result.accepted_cipher_suites
        assert accepted == [], (name, [s.cipher_suite.name for s in accepted])

    tls12 = scan.tls_1_2_cipher_suites.result.accepted_cipher_suites
    assert tls12, "TLS 1.2 must stay available"
    for suite in tls12:
        name = suite.cipher_suite.name
        assert name.startswith("TLS_ECDHE_RSA_WITH_"), name  # forward secret, authenticated
        assert "_GCM_" in name or "CHACHA20_POLY1305" in name, name  # AEAD
        assert suite.ephemeral_key is not None, name
    assert scan.tls_1_3_cipher_suites.result.accepted_cipher_suites

    assert not scan.tls_compression.result.supports_compression
    renegotiation = scan.session_renegotiation.result
    assert not renegotiation.is_vulnerable_to_client_renegotiation_dos
    assert renegotiation.client_renegotiations_success_count == 0
    assert renegotiation.supports_secure_renegotiation  # RFC 5746: no insecure renegotiation
    resumption = scan.session_resumption.result
    assert TlsResumptionSupportEnum.FULLY_SUPPORTED in (
        resumption.session_id_resumption_result, resumption.tls_ticket_resumption_result
    )
