"""ServerTLS rotation: new handshakes get new files, broken files are refused, the
watcher settles and stops, encrypted keys get their password from a file or env."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import CollectorRegistry

from tls import CertificateSource, ServerTLS, TLSConfigError, TLSMetrics


def _value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def served(issue, registry):
    """A ServerTLS for api.test reporting to `registry`, and its Leaf."""
    leaf = issue("api", "api.test")
    return ServerTLS([leaf.source], metrics=TLSMetrics(registry)), leaf


async def test_reload_serves_new_files_to_new_handshakes(served, issue, serve, peer_of, client_for) -> None:
    server, leaf = served
    port = await serve(server.context)
    old_serial = leaf.serial
    assert (await peer_of(port, client_for(), "api.test")).serial == old_serial
    assert [r.outcome for r in server.reload()] == ["unchanged"]

    leaf.rewrite(issue("new", "api.test"))
    [result] = server.reload()
    assert (result.outcome, result.serial) == ("reloaded", leaf.serial) and leaf.serial != old_serial
    assert (await peer_of(port, client_for(), "api.test")).serial == leaf.serial
    assert (await peer_of(port, client_for(tls12=True), "api.test")).serial == leaf.serial


def _expired(issue):
    now = datetime.now(timezone.utc)
    return issue("old", "api.test", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))


@pytest.mark.parametrize("breakage", ["garbage", "wrong key", "expired", "missing key", "der"])
async def test_broken_files_are_refused_and_old_cert_stays(
    served, issue, registry, serve, peer_of, client_for, caplog, breakage
) -> None:
    server, leaf = served
    port = await serve(server.context)
    good_serial = leaf.serial
    src = leaf.source
    if breakage == "garbage":
        src.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        named = src.cert_file
    elif breakage == "wrong key":
        src.key_file.write_bytes(issue("x", "api.test").source.key_file.read_bytes())
        named = src.key_file
    elif breakage == "expired":
        leaf.rewrite(_expired(issue))
        named = src.cert_file
    elif breakage == "missing key":
        src.key_file.unlink()
        named = src.key_file
    else:
        src.cert_file.write_bytes(b"\x30\x82\x01\x00" + b"\x00" * 256)
        named = src.cert_file

    with caplog.at_level(logging.ERROR, logger="scoregate.tls"):
        [result] = server.reload()
    assert result.outcome == "refused" and str(named) in result.error
    assert result.serial == good_serial
    assert any(str(named) in r.getMessage() and "still serving" in r.getMessage() for r in caplog.records)
    assert _value(registry, "scoregate_tls_certificate_reloads_total", name="api", outcome="failure") == 1
    assert _value(registry, "scoregate_tls_certificate_reload_failing", name="api") == 1
    assert (await peer_of(port, client_for(), "api.test")).serial == good_serial

    # Fixing the files is picked up, and the failing gauge goes back to 0.
    leaf.rewrite(issue("fixed", "api.test"))
    assert server.reload()[0].outcome == "reloaded"
    assert _value(registry, "scoregate_tls_certificate_reload_failing", name="api") == 0
    assert (await peer_of(port, client_for(), "api.test")).serial == leaf.serial


def test_poll_waits_for_files_to_settle(served, issue, registry) -> None:
    server, leaf = served
    new = issue("new", "api.test")
    # A copy in progress: the certificate is new, the key still the old one.
    leaf.source.cert_file.write_bytes(new.source.cert_file.read_bytes())
    assert server.poll()[0].outcome == "pending"
    leaf.source.key_file.write_bytes(new.source.key_file.read_bytes())
    assert server.poll()[0].outcome == "pending"  # changed again: wait one more round
    assert server.poll()[0].outcome == "reloaded"
    assert server.certificates["api"].serial == new.serial
    assert server.poll()[0].outcome == "unchanged"
    assert _value(registry, "scoregate_tls_certificate_reloads_total", name="api", outcome="failure") == 0


def test_poll_reports_broken_files_once(served, registry) -> None:
    server, leaf = served
    good = leaf.source.cert_file.read_bytes()
    leaf.source.cert_file.write_text("junk\n")
    outcomes = [server.poll()[0].outcome for _ in range(4)]
    assert outcomes == ["pending", "refused", "refused", "refused"]
    assert _value(registry, "scoregate_tls_certificate_reloads_total", name="api", outcome="failure") == 1
    assert _value(registry, "scoregate_tls_certificate_reload_failing", name="api") == 1
    # Putting the served file back clears the alarm without counting a reload.
    leaf.source.cert_file.write_bytes(good)
    assert server.poll()[0].outcome == "unchanged"
    assert _value(registry, "scoregate_tls_certificate_reload_failing", name="api") == 0


async def test_watch_picks_up_changes_and_close_stops_it(served, issue, registry) -> None:
    server, leaf = served
    with pytest.raises(ValueError):
        server.watch(0)
    task = server.watch(0.05)
    assert server.watch(0.05) is task  # one watcher per ServerTLS
    leaf.rewrite(issue("new", "api.test"))
    for _ in range(100):
        if server.certificates["api"].serial == leaf.serial:
            break
        await asyncio.sleep(0.05)
    assert server.certificates["api"].serial == leaf.serial
    assert _value(registry, "scoregate_tls_certificate_reloads_total", name="api", outcome="success") == 1
    await server.close()
    assert task.done()
    await server.close()  # idempotent


async def test_reload_pem_hook(served, issue, serve, peer_of, client_for) -> None:
    server, leaf = served
    port = await serve(server.context)
    secret = issue("secret", "api.test")
    result = server.reload_pem(
        "api", secret.source.cert_file.read_bytes(), secret.source.key_file.read_bytes()
    )
    assert result.outcome == "reloaded"
    assert (await peer_of(port, client_for(), "api.test")).serial == secret.serial
    # Unchanged files do not take over again...
    assert [server.poll()[0].outcome for _ in range(2)] == ["unchanged"] * 2
    assert server.reload()[0].outcome == "unchanged"
    # ...and bad bytes are refused, naming the certificate.
    bad = server.reload_pem("api", b"nope", secret.source.key_file.read_bytes())
    assert bad.outcome == "refused" and "api: certificate PEM" in bad.error
    assert (await peer_of(port, client_for(), "api.test")).serial == secret.serial
    with pytest.raises(KeyError):
        server.reload_pem("unknown", b"", b"")


async def test_encrypted_keys_with_password_file_and_env(
    issue, tmp_path, monkeypatch, serve, peer_of, client_for
) -> None:
    in_file = issue("file", "file.test", password=b"from a file")
    in_env = issue("env", "env.test", password=b"from the env", rsa=True)
    password_file = tmp_path / "password"
    password_file.write_text("from a file\n")  # as `echo` writes it
    monkeypatch.setenv("SCOREGATE_TEST_KEY_PASSWORD", "from the env")
    sources = [
        CertificateSource("file", in_file.source.cert_file, in_file.source.key_file, password_file=password_file),
        CertificateSource("env", in_env.source.cert_file, in_env.source.key_file,
                          password_env="SCOREGATE_TEST_KEY_PASSWORD"),
    ]
    server = ServerTLS(sources)
    port = await serve(server.context)
    assert (await peer_of(port, client_for(), "file.test")).serial == in_file.serial
    assert (await peer_of(port, client_for(), "env.test")).serial == in_env.serial

    # Rotation to a key with a new password: both files change, then reload.
    again = issue("again", "file.test", password=b"rotated")
    in_file.rewrite(again)
    password_file.write_text("rotated\n")
    assert [r.outcome for r in server.reload()] == ["reloaded", "unchanged"]
    assert (await peer_of(port, client_for(), "file.test")).serial == again.serial


def test_startup_errors_name_the_file(issue, tmp_path, monkeypatch) -> None:
    locked = issue("locked", "a.test", password=b"pw")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    source = CertificateSource("a", locked.source.cert_file, locked.source.key_file, password_env="NOT_SET_ANYWHERE")
    with pytest.raises(TLSConfigError, match=re.escape(f"{locked.source.key_file}: environment variable")):
        ServerTLS([source])
    wrong = tmp_path / "wrong"
    wrong.write_text("guess\n")
    source = CertificateSource("a", locked.source.cert_file, locked.source.key_file, password_file=wrong)
    with pytest.raises(TLSConfigError, match=re.escape(f"{locked.source.key_file}: wrong password")):
        ServerTLS([source])
    expired = _expired(issue)
    with pytest.raises(TLSConfigError, match=re.escape(f"{expired.source.cert_file}: certificate expired")):
        ServerTLS.from_files(expired.source.cert_file, expired.source.key_file)
    leaf = issue("a", "a.test")
    with pytest.raises(TLSConfigError, match="unique"):
        ServerTLS([leaf.source, leaf.source])
