"""TLSMetrics: handshake outcomes seen on real connections, the expiry gauge, and
session resumption (which the `resumed` outcome counts)."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import warnings

import pytest
from prometheus_client import CollectorRegistry

from tls import ServerTLS, TLSMetrics


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def port_and_leaf(issue, registry, serve):
    leaf = issue("api", "api.test")
    server = ServerTLS([leaf.source], listener="public")
    server.attach_metrics(TLSMetrics(registry))  # the late-binding path the gateway may use
    return await serve(server.context), leaf


def _handshakes(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "scoregate_tls_handshakes_total":
                assert sample.labels["listener"] == "public"
                out[sample.labels["version"], sample.labels["outcome"]] = sample.value
    return out


def _blocking_client(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None):
    """Handshake, read the greeting (which also delivers TLS 1.3 tickets), close.
    Returns (session, session_reused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.test", session=session) as tls:
            assert tls.recv(64) == b"hello over tls\n"
            return tls.session, tls.session_reused


def _send_and_wait_close(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if not data:
            return b""  # connect and hang up at once
        raw.sendall(data)
        chunks = []
        while chunk := raw.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_handshake_outcomes_are_counted(port_and_leaf, registry, client_for) -> None:
    port, _leaf = port_and_leaf
    await asyncio.to_thread(_blocking_client, port, client_for())
    await asyncio.to_thread(_blocking_client, port, client_for(tls12=True))

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(_blocking_client, port, old)

    cbc_only = client_for(tls12=True)
    cbc_only.set_ciphers("AES128-SHA:AES256-SHA")  # no forward secrecy, not AEAD
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(_blocking_client, port, cbc_only)

    distrustful = ssl.create_default_context()  # does not trust the test CA
    distrustful.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(_blocking_client, port, distrustful)

    reply = await asyncio.to_thread(_send_and_wait_close, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"HTTP/" not in reply  # plain HTTP is not answered, the connection is closed
    await asyncio.to_thread(_send_and_wait_close, port, b"")  # connect and hang up

    expected = {
        ("TLSv1.3", "ok"): 1,
        ("TLSv1.2", "ok"): 1,
        ("unknown", "protocol_version"): 1,
        ("unknown", "no_shared_cipher"): 1,
        ("unknown", "peer_alert"): 1,
        ("unknown", "not_tls"): 1,
        ("unknown", "abandoned"): 1,
    }
    for _ in range(50):  # abandoned is recorded when the connection object is freed
        gc.collect()
        if _handshakes(registry) == expected:
            break
        await asyncio.sleep(0.02)
    assert _handshakes(registry) == expected
    assert registry.get_sample_value("scoregate_tls_handshakes_started_total", {"listener": "public"}) == 7
    selections = registry.get_sample_value(
        "scoregate_tls_certificate_selections_total", {"listener": "public", "name": "api", "match": "exact"}
    )
    assert selections >= 3


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
async def test_session_resumption_with_tickets(port_and_leaf, registry, client_for, tls12) -> None:
    # Resumption is by session ticket on both versions: a Python server context keeps
    # no session-ID cache (sslyze reports session IDs as not supported, tickets as
    # fully supported; see tests/functional/test_tls_scan.py).
    port, _leaf = port_and_leaf
    client = client_for(tls12)
    session, reused = await asyncio.to_thread(_blocking_client, port, client)
    assert session is not None and session.has_ticket and not reused
    _, reused = await asyncio.to_thread(_blocking_client, port, client, session)
    assert reused
    version = "TLSv1.2" if tls12 else "TLSv1.3"
    assert _handshakes(registry) == {(version, "ok"): 1, (version, "resumed"): 1}


async def test_expiry_gauge_follows_the_served_certificate(port_and_leaf, registry, issue) -> None:
    _port, leaf = port_and_leaf
    server = ServerTLS([leaf.source], metrics=TLSMetrics(CollectorRegistry()))

    def gauge(reg: CollectorRegistry) -> float:
        return reg.get_sample_value("scoregate_tls_certificate_expiry_timestamp_seconds", {"name": "api"})

    assert gauge(registry) == server.certificates["api"].not_after.timestamp()
    metrics = TLSMetrics(CollectorRegistry())
    server.attach_metrics(metrics)
    leaf.rewrite(issue("new", "api.test", not_after=server.certificates["api"].not_after.replace(year=2031)))
    server.reload()
    assert gauge(metrics.registry) == server.certificates["api"].not_after.timestamp()
    assert server.certificates["api"].not_after.year == 2031


async def test_tickets_survive_a_rotation(issue, serve, client_for) -> None:
    leaf = issue("api", "api.test")
    server = ServerTLS([leaf.source])
    port = await serve(server.context)
    client = client_for()
    session, _ = await asyncio.to_thread(_blocking_client, port, client)
    leaf.rewrite(issue("new", "api.test"))
    assert server.reload()[0].outcome == "reloaded"
    _, reused = await asyncio.to_thread(_blocking_client, port, client, session)
    assert reused  # the ticket keys belong to the listener's context, not the certificate
    _, reused = await asyncio.to_thread(_blocking_client, port, client_for())
    assert not reused
