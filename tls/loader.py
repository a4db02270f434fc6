"""One server certificate: where it comes from, and turning its bytes into a context.

Rotation needs the same steps at startup, on a file change and from a Kubernetes
Secret: read the bytes once, check them with `cryptography` (errors name the file),
then hand exactly those bytes to OpenSSL. OpenSSL only loads certificate chains from
files, so the checked bytes go through a private temporary folder (mode 0700, on
/dev/shm when there is one so keys do not touch a disk) that is removed at once.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509

from ._util import not_after
from .errors import TLSConfigError
from .pem import (
    StrPath,
    check_key_matches,
    check_validity,
    parse_certificates,
    parse_private_key,
    read_file,
)
from .policy import new_server_context, require_client_certificates

_SHM = Path("/dev/shm")


@dataclass(frozen=True)
class CertificateSource:
    """Where one server certificate's files are; they are re-read on every reload.

    `server_names` are the SNI names it serves (exact, or `*.domain`); empty means the
    DNS names in the certificate's subjectAltName. The key's password comes from
    `password_file` (one trailing newline ignored) or the `password_env` variable.
    """

    name: str
    cert_file: Path
    key_file: Path
    password_file: Path | None = None
    password_env: str | None = None
    server_names: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], base_dir: StrPath | None = None) -> CertificateSource:
        """From a settings-file entry: name, cert, key, password_file, password_env, server_names."""
        unknown = set(data) - {"name", "cert", "key", "password_file", "password_env", "server_names"}
        if unknown:
            raise TLSConfigError(f"unknown certificate setting(s): {', '.join(sorted(unknown))}")
        if "cert" not in data or "key" not in data:
            raise TLSConfigError(f"a certificate entry needs 'cert' and 'key': {dict(data)!r}")
        base = Path(base_dir) if base_dir is not None else None

        def path(value: object) -> Path:
            p = Path(str(value)).expanduser()
            return base / p if base is not None and not p.is_absolute() else p

        names = data.get("server_names") or ()
        if isinstance(names, str):
            names = [n for n in names.replace(";", ",").split(",") if n.strip()]
        cert = path(data["cert"])
        return cls(
            name=str(data.get("name") or cert.stem),
            cert_file=cert,
            key_file=path(data["key"]),
            password_file=path(data["password_file"]) if data.get("password_file") else None,
            password_env=str(data["password_env"]) if data.get("password_env") else None,
            server_names=tuple(str(n).strip() for n in names),  # type: ignore[union-attr]
        )

    @classmethod
    def parse(cls, text: str, base_dir: StrPath | None = None) -> CertificateSource:
        """From a command-line value: `cert=FILE,key=FILE[,name=N][,password_file=F]
        [,password_env=VAR][,server_names=a.example;*.b.example]`."""
        fields: dict[str, object] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise TLSConfigError(f"{text!r}: expected key=value pairs separated by commas")
            fields[key.strip().replace("-", "_")] = value.strip()
        return cls.from_mapping(fields, base_dir)

    def read(self) -> PemMaterial:
        """The current bytes of the files (and the password), for one load attempt."""
        return PemMaterial(
            cert_pem=read_file(self.cert_file, "certificate"),
            key_pem=read_file(self.key_file, "private key"),
            password=self._password(),
            cert_origin=str(self.cert_file),
            key_origin=str(self.key_file),
        )

    def _password(self) -> bytes | None:
        if self.password_file is not None:
            data = read_file(self.password_file, "password")
            return data[:-2] if data.endswith(b"\r\n") else data.removesuffix(b"\n")
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise TLSConfigError(
                    f"{self.key_file}: environment variable {self.password_env} "
                    "(the key's password) is not set"
                )
            return value.encode()
        return None


@dataclass(frozen=True)
class PemMaterial:
    """The bytes of one certificate chain and key, plus what to call them in errors."""

    cert_pem: bytes
    key_pem: bytes
    password: bytes | None = field(default=None, repr=False)
    cert_origin: str = "certificate"
    key_origin: str = "private key"

    @property
    def digest(self) -> str:
        """Identifies this exact content, so an unchanged file is not reloaded."""
        h = hashlib.sha256()
        for part in (self.cert_pem, self.key_pem, self.password or b""):
            h.update(len(part).to_bytes(8, "big") + part)
        return h.hexdigest()


@dataclass(frozen=True)
class ServingCertificate:
    """A loaded certificate: its own server context and the facts operators ask about."""

    name: str
    context: ssl.SSLContext
    chain: tuple[x509.Certificate, ...]
    digest: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    @property
    def not_after(self) -> datetime:
        return not_after(self.leaf)

    def dns_names(self) -> tuple[str, ...]:
        """The DNS names of the subjectAltName (what SNI is matched against by default)."""
        return tuple(self._alt_names(x509.DNSName))

    def ip_addresses(self) -> tuple[str, ...]:
        """The IP addresses of the subjectAltName, as text."""
        return tuple(str(address) for address in self._alt_names(x509.IPAddress))

    def _alt_names(self, kind) -> list:
        try:
            san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return san.value.get_values_for_type(kind)


def build_certificate(
    name: str, material: PemMaterial, *, client_ca: tuple[bytes, str] | None = None
) -> ServingCertificate:
    """Check `material` and load it into a new server context with the policy.

    `client_ca` is (PEM bytes, file name) of the CA bundle client certificates must
    chain to; it is loaded here too because OpenSSL verifies a client against the
    context that SNI switched to. Raises TLSConfigError naming the bad file.
    """
    certs = parse_certificates(material.cert_origin, material.cert_pem)
    key = parse_private_key(material.key_origin, material.key_pem, material.password)
    check_validity(material.cert_origin, certs)
    check_key_matches(material.cert_origin, material.key_origin, certs, key)
    ctx = new_server_context()
    with tempfile.TemporaryDirectory(prefix="scoregate-tls-", dir=_private_tmp()) as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        _write_private(cert_path, material.cert_pem)
        _write_private(key_path, material.key_pem)
        try:
            ctx.load_cert_chain(cert_path, key_path, password=material.password)
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"{material.cert_origin}: OpenSSL refused the certificate or key ({exc})"
            ) from None
    if client_ca is not None:
        require_client_certificates(ctx, client_ca[0], client_ca[1])
    return ServingCertificate(name=name, context=ctx, chain=tuple(certs), digest=material.digest)


def _private_tmp() -> str | None:
    return str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK | os.X_OK) else None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
