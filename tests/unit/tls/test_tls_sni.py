"""SNI: which certificate a server name gets (RFC 6125 wildcards), over real handshakes."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess

import pytest
from cryptography import x509

from tls import CertificateSet, CertificateSource, ServerTLS, TLSConfigError
from tls.loader import build_certificate
from tls.sni import DEFAULT, EXACT, WILDCARD, check_pattern, normalize

OPENSSL = "/usr/bin/openssl"


@pytest.fixture
def three(issue):
    """api.test (default), *.apps.test and an RSA certificate for rsa.test."""
    return issue("api", "api.test"), issue("apps", "*.apps.test"), issue("rsa", "rsa.test", rsa=True)


def _loaded(leaf):
    return build_certificate(leaf.source.name, leaf.source.read())


def test_names_are_normalized() -> None:
    assert normalize("API.Example.COM.") == "api.example.com"
    assert normalize("bücher.example") == "xn--bcher-kva.example"
    assert check_pattern("*.Example.com") == "*.example.com"


@pytest.mark.parametrize(
    "pattern", ["w*.example.com", "*w.example.com", "a.*.example.com", "*.com", "*", "a..b", ""]
)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(TLSConfigError):
        check_pattern(pattern)


def test_selection_follows_rfc6125(three) -> None:
    api, apps, rsa = (_loaded(leaf) for leaf in three)
    certs = CertificateSet([api, apps, rsa])
    cases = {
        "api.test": ("api", EXACT),
        "API.TEST.": ("api", EXACT),
        "rsa.test": ("rsa", EXACT),
        "model-a.apps.test": ("apps", WILDCARD),
        "apps.test": ("api", DEFAULT),  # the wildcard does not cover its own parent
        "a.b.apps.test": ("api", DEFAULT),  # nor more than one label
        "other.test": ("api", DEFAULT),
        None: ("api", DEFAULT),
    }
    for server_name, (name, match) in cases.items():
        got = certs.select(server_name)
        assert (got.certificate.name, got.match) == (name, match), server_name


def test_exact_beats_wildcard_and_configured_names_win(issue) -> None:
    star = _loaded(issue("star", "*.apps.test"))
    one = _loaded(issue("one", "one.apps.test"))
    certs = CertificateSet([star, one], default="star")
    assert certs.select("one.apps.test").certificate.name == "one"
    assert certs.select("two.apps.test").certificate.name == "star"
    # Configured server_names replace the certificate's own SAN names for SNI.
    certs = CertificateSet([star, one], default="one", server_names={"star": ("scoring.test",)})
    assert certs.select("scoring.test").certificate.name == "star"
    assert certs.select("two.apps.test").match == DEFAULT
    with pytest.raises(TLSConfigError, match="wildcard"):
        CertificateSet([star], server_names={"star": ("x*.apps.test",)})
    with pytest.raises(TLSConfigError, match="default certificate 'nope'"):
        CertificateSet([star], default="nope")


def test_source_from_settings(tmp_path) -> None:
    source = CertificateSource.parse(
        "cert=a.pem,key=a-key.pem,name=apps,password-env=PW,server_names=a.test;*.b.test", tmp_path
    )
    assert source == CertificateSource(
        "apps", tmp_path / "a.pem", tmp_path / "a-key.pem", None, "PW", ("a.test", "*.b.test")
    )
    with pytest.raises(TLSConfigError, match="unknown certificate setting"):
        CertificateSource.from_mapping({"cert": "a", "key": "b", "kee": "c"})


async def test_handshakes_pick_by_server_name(three, serve, peer_of, client_for) -> None:
    api, apps, rsa = three
    server = ServerTLS([api.source, apps.source, rsa.source])
    port = await serve(server.context)
    client = client_for()
    assert (await peer_of(port, client, "api.test")).serial == api.serial
    assert (await peer_of(port, client, "m1.apps.test")).serial == apps.serial
    assert (await peer_of(port, client, "rsa.test")).serial == rsa.serial
    # Unknown names and clients that send no SNI (an IP address) get the default.
    no_check = client_for()
    no_check.check_hostname = False
    assert (await peer_of(port, no_check, "unknown.test")).serial == api.serial
    assert (await peer_of(port, no_check, None)).serial == api.serial


@pytest.mark.parametrize("rsa", [False, True], ids=["ecdsa", "rsa"])
async def test_rsa_and_ecdsa_with_tls12_and_tls13(issue, serve, peer_of, client_for, rsa) -> None:
    leaf = issue("one", "one.test", rsa=rsa)
    other = issue("other", "other.test", rsa=not rsa)  # the default has the other key type
    port = await serve(ServerTLS([other.source, leaf.source]).context)
    tls13 = await peer_of(port, client_for(), "one.test")
    assert (tls13.version, tls13.serial) == ("TLSv1.3", leaf.serial)
    tls12 = await peer_of(port, client_for(tls12=True), "one.test")
    assert tls12.version == "TLSv1.2" and tls12.serial == leaf.serial
    # The TLS 1.2 suite matches the chosen certificate's key, not the default's.
    assert tls12.cipher.startswith("ECDHE-RSA-" if rsa else "ECDHE-ECDSA-"), tls12.cipher
    assert "GCM" in tls12.cipher or "CHACHA20" in tls12.cipher


def _leaf_serial(s_client_output: str) -> int:
    pem = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", s_client_output, re.S)
    assert pem, s_client_output
    return x509.load_pem_x509_certificate(pem.group(0).encode()).serial_number


@pytest.mark.skipif(not os.access(OPENSSL, os.X_OK), reason="needs the openssl command")
async def test_openssl_s_client_sees_the_sni_certificate(three, serve, tmp_path, test_ca) -> None:
    api, apps, rsa = three
    port = await serve(ServerTLS([api.source, apps.source, rsa.source]).context)
    ca_file = tmp_path / "ca.pem"
    test_ca.cert_pem.write_to_path(str(ca_file))
    for name, expected in (("x.apps.test", apps.serial), ("rsa.test", rsa.serial)):
        proc = await asyncio.create_subprocess_exec(
            OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
            "-verify_hostname", name, "-CAfile", str(ca_file), "-verify_return_error",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        assert "Verify return code: 0 (ok)" in text, text
        assert _leaf_serial(text) == expected


def test_tls_context_has_policy_and_callback(three) -> None:
    server = ServerTLS([leaf.source for leaf in three])
    ctx = server.context
    assert ctx.sni_callback is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_NO_TICKET
    for cert in server.certificates:
        assert cert.context.minimum_version == ssl.TLSVersion.TLSv1_2
