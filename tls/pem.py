"""Read and check PEM certificates and keys before OpenSSL sees them.

OpenSSL's own errors ("[SSL] PEM lib (_ssl.c:3900)") do not say which file is wrong or
why. Parsing with `cryptography` first lets every failure become a TLSConfigError that
names the file and the problem: missing, not PEM, encrypted, expired, mismatched.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._util import not_after, not_before, spki_der
from .errors import TLSConfigError

StrPath = str | os.PathLike[str]
Password = str | bytes | None

MAX_PEM_BYTES = 1 << 20
_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY")


def read_file(path: Path, what: str) -> bytes:
    """The bytes of `path`, or a TLSConfigError saying why it cannot be read.

    Reads at most MAX_PEM_BYTES: a watcher polling a wrong path (a log file, a disk
    image) must not read gigabytes every few seconds.
    """
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except FileNotFoundError:
        raise TLSConfigError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{path}: {what} file is a directory") from None
    except PermissionError:
        raise TLSConfigError(f"{path}: permission denied reading the {what} file") from None
    except OSError as exc:
        raise TLSConfigError(f"{path}: cannot read the {what} file ({exc.strerror})") from None
    if len(data) > MAX_PEM_BYTES:
        raise TLSConfigError(f"{path}: the {what} file is larger than {MAX_PEM_BYTES} bytes")
    return data


def load_certificates(path: StrPath) -> list[x509.Certificate]:
    """All certificates in a PEM file, in file order (leaf first for a server chain)."""
    path = Path(path)
    return parse_certificates(path, read_file(path, "certificate"))


def parse_certificates(path: StrPath, data: bytes) -> list[x509.Certificate]:
    """Like load_certificates for bytes already read (`path` only names them in errors).

    Rotation reads a file once and checks, hashes and loads those same bytes, so a
    file replaced in between cannot slip through unchecked.
    """
    path = Path(path)
    _expect_pem(path, data, "certificate", _CERT_LABELS)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TLSConfigError(f"{path}: cannot parse the PEM certificate ({_short(exc)})") from None


def load_private_key(path: StrPath, password: Password = None) -> PrivateKeyTypes:
    """The first private key in a PEM file, decrypted with `password` if it is encrypted."""
    path = Path(path)
    return parse_private_key(path, read_file(path, "private key"), password)


def parse_private_key(path: StrPath, data: bytes, password: Password = None) -> PrivateKeyTypes:
    """Like load_private_key for bytes already read (`path` only names them in errors)."""
    path = Path(path)
    _expect_pem(path, data, "private key", _KEY_LABELS)
    secret = password.encode() if isinstance(password, str) else password
    try:
        return serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        if secret is not None:  # a password for a plain key: OpenSSL ignores it, so do we
            return parse_private_key(path, data, None)
        raise TLSConfigError(
            f"{path}: the private key is encrypted and no password was given"
        ) from None
    except ValueError as exc:
        if "password" in str(exc).lower():
            raise TLSConfigError(f"{path}: wrong password for the encrypted private key") from None
        raise TLSConfigError(f"{path}: cannot parse the PEM private key ({_short(exc)})") from None
    except UnsupportedAlgorithm as exc:
        raise TLSConfigError(f"{path}: unsupported private key ({_short(exc)})") from None


def check_validity(
    path: StrPath, certs: list[x509.Certificate], now: datetime | None = None
) -> None:
    """Refuse a chain with any certificate expired or not yet valid at `now`."""
    now = now or datetime.now(timezone.utc)
    for index, cert in enumerate(certs):
        which = "certificate"
        if index:
            which = f"chain certificate #{index + 1} ({_subject(cert)})"
        if not_after(cert) < now:
            raise TLSConfigError(f"{path}: {which} expired on {_when(not_after(cert))}")
        if not_before(cert) > now:
            raise TLSConfigError(f"{path}: {which} is not valid before {_when(not_before(cert))}")


def check_key_matches(
    cert_path: StrPath, key_path: StrPath, certs: list[x509.Certificate], key: PrivateKeyTypes
) -> None:
    """Refuse a key that is not the one of the first (leaf) certificate."""
    public = spki_der(key.public_key())
    if spki_der(certs[0].public_key()) == public:
        return
    if any(spki_der(c.public_key()) == public for c in certs[1:]):
        raise TLSConfigError(
            f"{cert_path}: certificates are in the wrong order; the one matching the key in "
            f"{key_path} must come first, followed by its issuers"
        )
    raise TLSConfigError(f"{key_path}: private key does not match the certificate in {cert_path}")


def _expect_pem(path: Path, data: bytes, what: str, labels: tuple[str, ...]) -> None:
    found = [m.decode() for m in _PEM_LABEL.findall(data)]
    if not found:
        hint = ""
        if _is_der(data):
            hint = " (it looks like DER; convert it with `openssl x509 -inform der`)"
        raise TLSConfigError(f"{path}: not a PEM file, no '-----BEGIN ...-----' line found{hint}")
    if not any(label in labels for label in found):
        holds = ", ".join(sorted(set(found)))
        raise TLSConfigError(f"{path}: no PEM {what} found (the file holds: {holds})")


def _is_der(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "empty subject"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(exc: Exception) -> str:
    """cryptography's messages carry a FAQ link; keep only the informative part."""
    text = re.sub(r"\s*See https?://\S+ for more details\.\s*", " ", str(exc)).strip()
    return text or type(exc).__name__
