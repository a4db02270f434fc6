"""tls.server_context / client_context: the policy they set and the errors they give."""

from __future__ import annotations

import re
import shutil
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tls import DevCertPaths, TLSConfigError, client_context, server_context, write_dev_certificates


def _about(path: Path, text: str) -> str:
    """A pattern for an error message that starts with the file's name."""
    return re.escape(str(path)) + ": " + text


def test_server_context_policy(dev_certs: DevCertPaths) -> None:
    ctx = server_context(dev_certs.cert, dev_certs.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & flag
    assert not ctx.options & ssl.OP_NO_TICKET  # session resumption stays on
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"] and cipher["kea"] == "kx-ecdhe", cipher["name"]


def test_client_context_verifies(dev_certs: DevCertPaths) -> None:
    ctx = client_context(cafile=dev_certs.ca_cert)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    # Only the given CA is trusted, not the system store as well.
    assert len(ctx.get_ca_certs()) == 1
    assert client_context().check_hostname


def test_missing_file_is_named(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=_about(missing, r"certificate file not found")):
        server_context(missing, dev_certs.key)
    with pytest.raises(TLSConfigError, match=_about(missing, r"private key file not found")):
        server_context(dev_certs.cert, missing)
    with pytest.raises(TLSConfigError, match=_about(missing, r"certificate file not found")):
        client_context(cafile=missing)


def test_not_pem_is_named(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(TLSConfigError, match=_about(junk, r"not a PEM file")):
        server_context(junk, dev_certs.key)
    with pytest.raises(TLSConfigError, match=_about(junk, r"not a PEM file")):
        server_context(dev_certs.cert, junk)


def test_der_certificate_gets_a_hint(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    leaf = x509.load_pem_x509_certificates(dev_certs.cert.read_bytes())[0]
    der = tmp_path / "server.der"
    der.write_bytes(leaf.public_bytes(serialization.Encoding.DER))
    with pytest.raises(TLSConfigError, match="looks like DER"):
        server_context(der, dev_certs.key)


def test_swapped_files_are_named(dev_certs: DevCertPaths) -> None:
    with pytest.raises(TLSConfigError, match=_about(dev_certs.key, r"no PEM certificate found")):
        server_context(dev_certs.key, dev_certs.cert)


def test_mismatched_key_names_both_files(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    other = write_dev_certificates(tmp_path / "other")
    with pytest.raises(TLSConfigError) as info:
        server_context(dev_certs.cert, other.key)
    message = str(info.value)
    assert message.startswith(f"{other.key}: private key does not match")
    assert str(dev_certs.cert) in message


def test_chain_in_wrong_order(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    leaf, ca = dev_certs.cert.read_text().split("-----END CERTIFICATE-----\n")[:2]
    reversed_chain = tmp_path / "reversed.pem"
    end = "-----END CERTIFICATE-----\n"
    reversed_chain.write_text(ca + end + leaf + end)
    with pytest.raises(TLSConfigError, match=_about(reversed_chain, "certificates are in the wrong order")):
        server_context(reversed_chain, dev_certs.key)


def _trustme_files(tmp_path: Path, **validity: datetime) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("localhost", **validity)
    cert_file, key_file = tmp_path / "tm.pem", tmp_path / "tm-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def test_expired_certificate_is_named(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    cert_file, key_file = _trustme_files(
        tmp_path, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    with pytest.raises(TLSConfigError, match=_about(cert_file, r"certificate expired on \d{4}-")):
        server_context(cert_file, key_file)


def test_not_yet_valid_certificate_is_named(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    cert_file, key_file = _trustme_files(
        tmp_path, not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)
    )
    with pytest.raises(TLSConfigError, match=_about(cert_file, r"certificate is not valid before")):
        server_context(cert_file, key_file)


def test_encrypted_key(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(dev_certs.key.read_bytes(), password=None)
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    assert server_context(dev_certs.cert, locked, password="s3cret")
    with pytest.raises(TLSConfigError, match=_about(locked, "the private key is encrypted and no pass")):
        server_context(dev_certs.cert, locked)
    with pytest.raises(TLSConfigError, match=_about(locked, r"wrong password")):
        server_context(dev_certs.cert, locked, password=b"guess")
    # A password for a key that is not encrypted is ignored, as OpenSSL does.
    assert server_context(dev_certs.cert, dev_certs.key, password="unused")


def test_combined_cert_and_key_file(dev_certs: DevCertPaths, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    shutil.copy(dev_certs.cert, combined)
    with combined.open("ab") as f:
        f.write(dev_certs.key.read_bytes())
    assert server_context(combined, combined)
