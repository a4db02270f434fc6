"""Choosing a certificate by the server name a client asks for (SNI).

Names are matched the way RFC 6125 (section 6.4.3) says a client matches them, so
the certificate picked is one the client will accept: exact names first, then
`*.example.com`, whose `*` stands for exactly one whole label (it matches
`a.example.com`, not `example.com` nor `a.b.example.com`). Partial wildcards such as
`w*.example.com` and wildcards over a public suffix like `*.com` are not used.
Anything that matches nothing gets the default certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import TLSConfigError
from .loader import ServingCertificate

log = logging.getLogger("scoregate.tls")

EXACT, WILDCARD, DEFAULT = "exact", "wildcard", "default"


def normalize(name: str) -> str:
    """Case-insensitive, without the trailing root dot; A-labels for IDNs."""
    name = name.strip().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return name.lower()
    return name.lower()


def check_pattern(pattern: str) -> str:
    """A normalized name or `*.domain` pattern, or TLSConfigError saying what is wrong."""
    name = normalize(pattern)
    labels = name.split(".")
    if not name or any(not label for label in labels):
        raise TLSConfigError(f"server name {pattern!r} has an empty label")
    if "*" in name:
        if labels[0] != "*" or "*" in ".".join(labels[1:]):
            raise TLSConfigError(
                f"server name {pattern!r}: a wildcard must be the whole leftmost label (*.example.com)"
            )
        if len(labels) < 3:
            raise TLSConfigError(f"server name {pattern!r}: a wildcard needs at least two labels after it")
    return name


@dataclass(frozen=True)
class Selection:
    certificate: ServingCertificate
    match: str  # EXACT, WILDCARD or DEFAULT


class CertificateSet:
    """An immutable set of loaded certificates with its SNI index and a default.

    Rotation builds a new set and swaps it in as a whole, so a handshake always sees
    one consistent set.
    """

    def __init__(
        self,
        certificates: Iterable[ServingCertificate],
        default: str | None = None,
        server_names: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        """`server_names` maps a certificate's name to its configured patterns; a
        certificate not in it serves the DNS names of its subjectAltName."""
        self._certs = {c.name: c for c in certificates}
        if not self._certs:
            raise TLSConfigError("at least one server certificate is needed")
        self._default_name = default or next(iter(self._certs))
        if self._default_name not in self._certs:
            raise TLSConfigError(f"default certificate {self._default_name!r} is not configured")
        self._configured = dict(server_names or {})
        self._exact: dict[str, ServingCertificate] = {}
        self._wildcard: dict[str, ServingCertificate] = {}  # parent domain -> cert
        for cert in self._certs.values():
            self._index(cert)

    def _index(self, cert: ServingCertificate) -> None:
        configured = self._configured.get(cert.name)
        for raw in configured or cert.dns_names():
            try:
                pattern = check_pattern(raw)
            except TLSConfigError as exc:
                if configured:
                    raise
                log.warning("certificate %s: subjectAltName ignored for SNI: %s", cert.name, exc)
                continue
            table, key = (self._wildcard, pattern[2:]) if pattern.startswith("*.") else (self._exact, pattern)
            owner = table.setdefault(key, cert)
            if owner is not cert:
                log.warning("server name %s is claimed by certificates %s and %s; %s serves it",
                            pattern, owner.name, cert.name, owner.name)

    @property
    def default(self) -> ServingCertificate:
        return self._certs[self._default_name]

    def select(self, server_name: str | None) -> Selection:
        """The certificate for `server_name` (None when the client sent no SNI)."""
        if server_name:
            name = normalize(server_name)
            cert = self._exact.get(name)
            if cert is not None:
                return Selection(cert, EXACT)
            first, dot, parent = name.partition(".")
            if dot and first and parent:
                cert = self._wildcard.get(parent)
                if cert is not None:
                    return Selection(cert, WILDCARD)
        return Selection(self.default, DEFAULT)

    def replace(self, cert: ServingCertificate) -> CertificateSet:
        """A new set with `cert` instead of the certificate of the same name."""
        if cert.name not in self._certs:
            raise KeyError(cert.name)
        certs = [cert if c.name == cert.name else c for c in self._certs.values()]
        return CertificateSet(certs, self._default_name, self._configured)

    def __getitem__(self, name: str) -> ServingCertificate:
        return self._certs[name]

    def __iter__(self) -> Iterator[ServingCertificate]:
        return iter(self._certs.values())

    def __len__(self) -> int:
        return len(self._certs)
