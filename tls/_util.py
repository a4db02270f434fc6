"""Small helpers shared by the tls modules: safe file writes, certificate facts and
the pieces of certificate building that the development and internal CAs share.

Private keys must never be readable by others, not even for an instant, and a reader
must never see a half-written PEM file; so every file is written to a temporary file
created with its final mode and then renamed over the target.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

KEY_MODE = 0o600
CERT_MODE = 0o644

try:  # POSIX only; without it concurrent first starts may race, which is harmless here
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_Name = x509.DNSName | x509.IPAddress


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode`, replacing any old file in one rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def not_before(cert: x509.Certificate) -> datetime:
    """Start of validity as an aware UTC datetime (the *_utc properties need cryptography 42)."""
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc
    return cert.not_valid_before.replace(tzinfo=timezone.utc)  # pragma: no cover


def not_after(cert: x509.Certificate) -> datetime:
    """End of validity as an aware UTC datetime."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=timezone.utc)  # pragma: no cover


def spki_der(public_key) -> bytes:  # noqa: ANN001 - any cryptography public key
    """A public key as comparable bytes (key classes lack == in older cryptography)."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_usage(**enabled: bool) -> x509.KeyUsage:
    """A KeyUsage extension with only the named flags set."""
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(enabled)
    return x509.KeyUsage(**flags)


def san_entries(hostnames: Sequence[str]) -> list[_Name]:
    """DNS names and IP addresses for the SAN extension, deduplicated, order kept."""
    if isinstance(hostnames, str):
        hostnames = [hostnames]
    out: list[_Name] = []
    for raw in hostnames:
        host = raw.strip().strip("[]")  # accept "[::1]" as written in URLs
        if not host:
            raise ValueError(f"empty hostname in {list(hostnames)!r}")
        try:
            entry: _Name = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(_dns_name(host))
        if entry not in out:
            out.append(entry)
    if not out:
        raise ValueError("at least one hostname is needed for a server certificate")
    return out


def _dns_name(host: str) -> str:
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"invalid hostname {host!r}: {exc}") from None
    labels = host.rstrip(".").split(".")
    if not all(re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label) for label in labels[1:]) \
            or not re.fullmatch(r"\*|[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", labels[0]):
        raise ValueError(f"invalid hostname {host!r}: not a DNS name nor an IP address")
    return host.lower()


@contextlib.contextmanager
def locked_dir(directory: Path, lock_name: str = ".devcert.lock") -> Iterator[None]:
    """Serialize check-and-write between processes starting at the same time."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory / lock_name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
