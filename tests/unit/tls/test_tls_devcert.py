"""tls.devcert: what the development CA and server certificate look like, and when
existing files are reused or replaced."""

from __future__ import annotations

import ipaddress
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

import tls
from tls import DevCertPaths, ensure_dev_certificates, write_dev_certificates

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def _snapshot(paths: DevCertPaths) -> dict[str, bytes]:
    names = ("ca_cert", "ca_key", "cert", "key")
    return {name: getattr(paths, name).read_bytes() for name in names}


def _chain(paths: DevCertPaths) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(paths.cert.read_bytes())


def _sans(cert: x509.Certificate) -> list:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_files_chain_and_modes(tmp_path: Path) -> None:
    paths = ensure_dev_certificates(tmp_path / "tls", now=NOW)
    assert paths == DevCertPaths(
        tmp_path / "tls/ca.pem", tmp_path / "tls/ca-key.pem",
        tmp_path / "tls/server.pem", tmp_path / "tls/server-key.pem",
    )
    for key in (paths.ca_key, paths.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    leaf, ca = _chain(paths)
    assert ca == x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert not [p for p in paths.ca_cert.parent.iterdir() if p.name.endswith(".tmp")]


def test_certificates_verify_for_every_default_name(tmp_path: Path) -> None:
    paths = ensure_dev_certificates(tmp_path, now=NOW)
    leaf, ca = _chain(paths)
    builder = PolicyBuilder().store(Store([ca])).time(NOW)
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        # The RFC 5280 profile checks of this verifier also cover the extensions.
        builder.build_server_verifier(name).verify(leaf, [])


def test_certificate_profile(tmp_path: Path) -> None:
    leaf, ca = _chain(ensure_dev_certificates(tmp_path, ("api.test", "10.0.0.7"), now=NOW))
    for cert in (leaf, ca):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert _common_name(ca) == "scoregate development CA"
    assert _common_name(leaf) == "api.test"

    ext = ca.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    ca_ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)

    ext = leaf.extensions
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert list(_sans(leaf)) == [
        x509.DNSName("api.test"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
    ]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=825)


def test_second_call_reuses_files(tmp_path: Path) -> None:
    first = _snapshot(ensure_dev_certificates(tmp_path, now=NOW))
    again = _snapshot(ensure_dev_certificates(tmp_path, now=NOW + timedelta(days=100)))
    assert again == first
    # A subset of the covered names, in another order and spelling, needs nothing new.
    subset = ensure_dev_certificates(tmp_path, ["[::1]", "LOCALHOST"], now=NOW)
    assert _snapshot(subset) == first


def test_new_hostname_reissues_only_the_server_certificate(tmp_path: Path) -> None:
    before = _snapshot(ensure_dev_certificates(tmp_path, ["localhost"], now=NOW))
    paths = ensure_dev_certificates(tmp_path, ["localhost", "gateway.internal"], now=NOW)
    after = _snapshot(paths)
    assert after["ca_cert"] == before["ca_cert"] and after["ca_key"] == before["ca_key"]
    assert after["cert"] != before["cert"] and after["key"] != before["key"]
    assert x509.DNSName("gateway.internal") in _sans(_chain(paths)[0])


def test_server_certificate_renewed_before_expiry(tmp_path: Path) -> None:
    before = _snapshot(ensure_dev_certificates(tmp_path, now=NOW))
    later = NOW + timedelta(days=360)  # server cert has < 7 days left
    paths = ensure_dev_certificates(tmp_path, now=later)
    after = _snapshot(paths)
    assert after["ca_cert"] == before["ca_cert"]
    assert after["cert"] != before["cert"]
    assert _chain(paths)[0].not_valid_after_utc > later + timedelta(days=300)


def test_everything_regenerated_when_ca_expires(tmp_path: Path) -> None:
    before = _snapshot(ensure_dev_certificates(tmp_path, now=NOW))
    after = _snapshot(ensure_dev_certificates(tmp_path, now=NOW + timedelta(days=3647)))
    assert all(after[name] != before[name] for name in before)


def test_broken_ca_key_regenerates_everything(tmp_path: Path) -> None:
    paths = ensure_dev_certificates(tmp_path, now=NOW)
    before = _snapshot(paths)
    paths.ca_key.write_text("garbage\n")
    after = _snapshot(ensure_dev_certificates(tmp_path, now=NOW))
    assert all(after[name] != before[name] for name in before)
    assert stat.S_IMODE(paths.ca_key.stat().st_mode) == 0o600


def test_server_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    mine = ensure_dev_certificates(tmp_path / "mine", now=NOW)
    theirs = write_dev_certificates(tmp_path / "theirs", now=NOW)
    shutil.copy(theirs.cert, mine.cert)
    shutil.copy(theirs.key, mine.key)
    ca_before = mine.ca_cert.read_bytes()
    ensure_dev_certificates(tmp_path / "mine", now=NOW)
    assert mine.ca_cert.read_bytes() == ca_before
    assert mine.cert.read_bytes() != theirs.cert.read_bytes()
    leaf, ca = _chain(mine)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_before))


def test_missing_server_key_is_recreated(tmp_path: Path) -> None:
    paths = ensure_dev_certificates(tmp_path)
    paths.key.unlink()
    ensure_dev_certificates(tmp_path)
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert tls.server_context(paths.cert, paths.key) is not None


def test_write_always_generates_new(tmp_path: Path) -> None:
    first = _snapshot(write_dev_certificates(tmp_path, ["localhost"]))
    second = _snapshot(write_dev_certificates(tmp_path, ["localhost"]))
    assert all(first[name] != second[name] for name in first)


def test_hostnames_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_dev_certificates(tmp_path, [])
    with pytest.raises(ValueError):
        ensure_dev_certificates(tmp_path, ["localhost", " "])


def test_tls_package_stands_alone() -> None:
    code = (
        "import sys, tls; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('router', 'serving')]; "
        "assert not bad, bad"
    )
    root = Path(tls.__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=30)
