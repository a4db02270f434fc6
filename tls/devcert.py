"""A development CA and server certificate, so HTTPS works with no setup.

`scoregate serve` must speak real TLS out of the box. Instead of a lone self-signed
certificate we make a small CA and a server certificate signed by it: clients trust
`ca.pem` once, and the server certificate can be reissued (new hostnames, expiry)
without them having to trust anything new. Existing files are reused while they are
still good, so restarts keep the same certificate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._util import (
    CERT_MODE,
    KEY_MODE,
    key_usage,
    locked_dir,
    not_after,
    not_before,
    san_entries,
    spki_der,
    write_atomic,
)

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=7)
BACKDATE = timedelta(minutes=5)  # tolerate small clock differences between machines
CA_COMMON_NAME = "scoregate development CA"
ORGANIZATION = "scoregate development"

_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class DevCertPaths:
    """Where the development CA and server certificate live."""

    ca_cert: Path
    ca_key: Path
    cert: Path  # server certificate followed by the CA certificate
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> DevCertPaths:
        d = Path(directory)
        return cls(d / "ca.pem", d / "ca-key.pem", d / "server.pem", d / "server-key.pem")


def ensure_dev_certificates(
    tls_dir: Path,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    now: datetime | None = None,
) -> DevCertPaths:
    """Return usable development certificates in `tls_dir`, creating only what is needed.

    The CA is kept while it is valid for more than RENEW_BEFORE; the server certificate
    is kept while it is too, covers `hostnames` and was signed by that CA.
    """
    now = _utc(now)
    names = san_entries(hostnames)
    paths = DevCertPaths.in_dir(tls_dir)
    Path(tls_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked_dir(Path(tls_dir)):
        ca = _load_ca(paths, now)
        if ca is None:
            _write_all(paths, names, now)
        elif not _server_ok(paths, ca[0], names, now):
            _write_server(paths, ca, names, now)
    return paths


def write_dev_certificates(
    out_dir: Path,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    now: datetime | None = None,
) -> DevCertPaths:
    """Always make a new CA and server certificate in `out_dir` (`scoregate tls dev-cert`)."""
    now = _utc(now)
    names = san_entries(hostnames)
    paths = DevCertPaths.in_dir(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked_dir(Path(out_dir)):
        _write_all(paths, names, now)
    return paths


# -- generation ---------------------------------------------------------------------


def _write_all(paths: DevCertPaths, names: list, now: datetime) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_ca(ca_key, now)
    # Keys before certificates: a crash in between leaves a key/cert mismatch, which
    # the next ensure_dev_certificates call notices and repairs.
    write_atomic(paths.ca_key, _key_pem(ca_key), KEY_MODE)
    write_atomic(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    _write_server(paths, (ca_cert, ca_key), names, now)


def _write_server(
    paths: DevCertPaths, ca: tuple[x509.Certificate, _Key], names: list, now: datetime
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _make_server(key, ca_cert, ca_key, names, now)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, ca_cert))
    write_atomic(paths.key, _key_pem(key), KEY_MODE)
    write_atomic(paths.cert, chain, CERT_MODE)


def _make_ca(key: _Key, now: datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ]
    )
    usage = key_usage(key_cert_sign=True, crl_sign=True)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server(
    key: _Key, ca_cert: x509.Certificate, ca_key: _Key, names: list, now: datetime
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    expires = min(now + SERVER_VALIDITY, not_after(ca_cert))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name(names)),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(expires)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _common_name(names: list) -> str:
    first = names[0].value
    text = str(first)
    return text if len(text) <= 64 else "scoregate development server"  # CN max is 64


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- checking existing files --------------------------------------------------------


def _load_ca(paths: DevCertPaths, now: datetime) -> tuple[x509.Certificate, _Key] | None:
    """The CA certificate and key if both load, match and stay valid long enough."""
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not constraints.ca:
        return None
    if not _same_public_key(cert, key) or not _fresh(cert, now):
        return None
    return cert, key


def _server_ok(
    paths: DevCertPaths, ca_cert: x509.Certificate, names: list, now: datetime
) -> bool:
    try:
        chain = x509.load_pem_x509_certificates(paths.cert.read_bytes())
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        cert = chain[0]
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    # server.pem must be exactly [server, this CA] so clients get the full chain.
    if len(chain) != 2 or chain[1] != ca_cert:
        return False
    return _same_public_key(cert, key) and _fresh(cert, now) and set(names) <= set(sans)


def _fresh(cert: x509.Certificate, now: datetime) -> bool:
    return not_before(cert) <= now and not_after(cert) - now > RENEW_BEFORE


def _same_public_key(cert: x509.Certificate, key: object) -> bool:
    public = getattr(key, "public_key", None)
    return public is not None and spki_der(cert.public_key()) == spki_der(public())


# -- small helpers ------------------------------------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo else now.replace(tzinfo=timezone.utc)
