"""InternalCA: a private CA for mutual TLS between the router and model replicas.

Replicas listen on ports other processes on the node (or pods in the cluster) can
reach; with router→replica mTLS a replica only talks to a client holding a
certificate from this CA, and the router only talks to a replica holding one. The
certificates are short-lived (two days by default) and reissued when a third of
their life is left, so a leaked replica key is soon worthless and nothing needs a
revocation list. The CA itself lives in a folder only the gateway can read.
"""

from __future__ import annotations

import logging
import ssl
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
from .pem import StrPath
from .policy import client_context, mtls_server_context

log = logging.getLogger("scoregate.tls")

CA_COMMON_NAME = "scoregate internal CA"
CA_VALIDITY = timedelta(days=5 * 365)
CA_RENEW_BEFORE = timedelta(days=30)
LEAF_VALIDITY = timedelta(days=2)
BACKDATE = timedelta(minutes=5)
ROUTER_CLIENT_NAME = "scoregate-router"


@dataclass(frozen=True)
class IssuedFiles:
    """A certificate issued by the internal CA, as files a process can load."""

    cert: Path  # the leaf certificate (PEM)
    key: Path  # its private key (PEM, mode 0600)
    ca: Path  # the internal CA certificate: what the other side must chain to
    not_after: datetime
    reissued: bool  # False when the existing files were still good and kept


class InternalCA:
    """A CA in `directory` (ca.pem, ca-key.pem) that issues replica and router certificates."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.certificate = cert
        self._key = key

    @property
    def cert_file(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def load_or_create(cls, directory: StrPath, *, now: datetime | None = None) -> InternalCA:
        """Load the CA in `directory`, or create one if it is missing, broken or expiring."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = now or datetime.now(timezone.utc)
        with locked_dir(directory, ".ca.lock"):
            loaded = _load_ca(directory, now)
            if loaded is not None:
                return cls(directory, *loaded)
            if (directory / "ca.pem").exists():
                log.warning("internal CA in %s is unusable or expiring; creating a new one "
                            "(certificates it issued are reissued on next use)", directory)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
            cert = (
                _builder(name, name, key.public_key(), now, CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
                .sign(key, hashes.SHA256())
            )
            write_atomic(directory / "ca-key.pem", _key_pem(key), KEY_MODE)
            write_atomic(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
            return cls(directory, cert, key)

    def issue(
        self, common_name: str, *, hostnames: Sequence[str] = (), client: bool = False,
        validity: timedelta = LEAF_VALIDITY, now: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """A new (certificate PEM, key PEM): a server certificate for `hostnames`, or
        with `client=True` a client certificate named `common_name`."""
        now = now or datetime.now(timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        expires = min(validity, not_after(self.certificate) - now)
        builder = (
            _builder(subject, self.certificate.subject, key.public_key(), now, expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                           critical=False)
        )
        if hostnames:
            builder = builder.add_extension(x509.SubjectAlternativeName(san_entries(hostnames)), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def ensure_server_files(
        self, directory: StrPath, hostnames: Sequence[str], *,
        validity: timedelta = LEAF_VALIDITY, now: datetime | None = None,
    ) -> IssuedFiles:
        """A replica's server certificate in `directory` (cert.pem, key.pem, ca.pem),
        reissued only when missing, from another CA, not covering `hostnames`, or past
        two thirds of its life. Call it at replica start and then periodically."""
        names = san_entries(hostnames)
        return self._ensure(Path(directory), str(names[0].value), hostnames, False, validity, now)

    def ensure_client_files(
        self, directory: StrPath, name: str = ROUTER_CLIENT_NAME, *,
        validity: timedelta = LEAF_VALIDITY, now: datetime | None = None,
    ) -> IssuedFiles:
        """The router's client certificate in `directory`, renewed like ensure_server_files."""
        return self._ensure(Path(directory), name, (), True, validity, now)

    def server_context(self, files: IssuedFiles) -> ssl.SSLContext:
        """For a replica: serve `files` and require a client certificate from this CA."""
        return mtls_server_context(files.cert, files.key, self.cert_file)

    def client_context(self, files: IssuedFiles) -> ssl.SSLContext:
        """For the router: trust only this CA and present the client certificate `files`."""
        return client_context(self.cert_file, cert_file=files.cert, key_file=files.key)

    def _ensure(
        self, directory: Path, common_name: str, hostnames: Sequence[str], client: bool,
        validity: timedelta, now: datetime | None,
    ) -> IssuedFiles:
        now = now or datetime.now(timezone.utc)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path, ca_path = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
        ca_pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        with locked_dir(directory, ".issue.lock"):
            current = self._still_good(cert_path, key_path, hostnames, now)
            reissued = current is None
            if current is None:
                cert_pem, key_pem = self.issue(common_name, hostnames=hostnames, client=client,
                                               validity=validity, now=now)
                write_atomic(key_path, key_pem, KEY_MODE)  # key first: see devcert
                write_atomic(cert_path, cert_pem, CERT_MODE)
                current = x509.load_pem_x509_certificate(cert_pem)
            if not ca_path.exists() or ca_path.read_bytes() != ca_pem:
                write_atomic(ca_path, ca_pem, CERT_MODE)
        return IssuedFiles(cert_path, key_path, ca_path, not_after(current), reissued)

    def _still_good(
        self, cert_path: Path, key_path: Path, hostnames: Sequence[str], now: datetime
    ) -> x509.Certificate | None:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert.verify_directly_issued_by(self.certificate)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return None
        if spki_der(cert.public_key()) != spki_der(key.public_key()):
            return None
        lifetime = not_after(cert) - not_before(cert)
        if not_before(cert) > now or not_after(cert) - now < lifetime / 3:
            return None
        if hostnames:
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return None
            if not set(san_entries(hostnames)) <= set(sans):
                return None
        return cert


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime,  # noqa: ANN001
             validity: timedelta) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ca(directory: Path, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not is_ca:
        return None
    if spki_der(cert.public_key()) != spki_der(key.public_key()):
        return None
    if not_before(cert) > now or not_after(cert) - now < CA_RENEW_BEFORE:
        return None
    return cert, key
