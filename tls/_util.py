"""Small helpers shared by the tls modules: safe file writes and certificate facts.

Private keys must never be readable by others, not even for an instant, and a reader
must never see a half-written PEM file; so every file is written to a temporary file
created with its final mode and then renamed over the target.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

KEY_MODE = 0o600
CERT_MODE = 0o644


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
