"""Prometheus metrics for TLS: handshakes, certificate expiry, reloads.

Handshakes are observed through `SSLContext.sslobject_class`, the documented hook
for the objects asyncio (and uvloop) create per TLS connection: our subclass records
how `do_handshake()` ends. What that can and cannot see:

- counted as `ok` / `resumed`: every handshake that completes, by TLS version;
- counted by reason: every handshake OpenSSL refuses while reading the client's
  messages (old protocol, no shared cipher, plain HTTP, missing or untrusted client
  certificate, an alert from the client);
- counted as `abandoned`: connections that began a handshake and were dropped before
  it ended (client closed or timed out, TCP health checks, a client that rejected
  our certificate without its alert reaching us); recorded when the connection
  object is freed, so it can lag by a moment;
- not seen at all: connections refused by the kernel (backlog full).
"""

from __future__ import annotations

import ssl
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

OK, RESUMED, ABANDONED = "ok", "resumed", "abandoned"

_REASONS = {
    "not_tls": {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL",
                "PACKET_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH"},
    "protocol_version": {"UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW", "NO_PROTOCOLS_AVAILABLE",
                         "TLSV1_ALERT_PROTOCOL_VERSION", "INAPPROPRIATE_FALLBACK"},
    "no_shared_cipher": {"NO_SHARED_CIPHER", "NO_SHARED_GROUPS", "NO_SUITABLE_SIGNATURE_ALGORITHM",
                         "NO_CIPHERS_AVAILABLE", "NO_SHARED_SIGNATURE_ALGORITHMS"},
    "client_certificate": {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"},
}


def failure_reason(exc: BaseException) -> str:
    """A small, fixed set of label values for why a handshake failed."""
    reason = getattr(exc, "reason", None) or ""
    for label, reasons in _REASONS.items():
        if reason in reasons:
            return label
    if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        return "peer_alert"  # the client refused something, usually our certificate
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return ABANDONED
    return "error"


class TLSMetrics:
    """The TLS metrics, registered in `registry` (one TLSMetrics per registry; share it
    between listeners, which are told apart by the `listener` label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple, object] = {}
        self.handshakes = Counter(
            "scoregate_tls_handshakes_total",
            "TLS handshakes that ended, by listener, TLS version (unknown when it failed "
            "before one was agreed) and outcome (ok, resumed, or why it failed).",
            ["listener", "version", "outcome"], registry=registry,
        )
        self.handshakes_started = Counter(
            "scoregate_tls_handshakes_started_total",
            "TCP connections that began a TLS handshake.", ["listener"], registry=registry,
        )
        self.selections = Counter(
            "scoregate_tls_certificate_selections_total",
            "Certificates chosen by SNI, by certificate and match (exact, wildcard, default).",
            ["listener", "name", "match"], registry=registry,
        )
        self.expiry = Gauge(
            "scoregate_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate being served, as a Unix timestamp.",
            ["name"], registry=registry,
        )
        self.reloads = Counter(
            "scoregate_tls_certificate_reloads_total",
            "Certificate reload attempts by outcome (success or failure).",
            ["name", "outcome"], registry=registry,
        )
        self.reload_failing = Gauge(
            "scoregate_tls_certificate_reload_failing",
            "1 while the newest files of a certificate were refused and an older one is "
            "still served, else 0.", ["name"], registry=registry,
        )

    def count(self, counter: Counter, *labels: str) -> None:
        """counter.labels(*labels).inc(), with the child kept: labels() costs more than
        the increment, and these run on every handshake. Label values come from small
        fixed sets (listeners, TLS versions, outcomes, configured certificate names)."""
        key = (counter, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        child.inc()

    def set_expiry(self, name: str, moment: datetime) -> None:
        self.expiry.labels(name=name).set(moment.timestamp())

    def reloaded(self, name: str, ok: bool) -> None:
        self.reloads.labels(name=name, outcome="success" if ok else "failure").inc()
        self.reload_failing.labels(name=name).set(0 if ok else 1)

    def observing_sslobject_class(self, listener: str) -> type[ssl.SSLObject]:
        """An SSLObject subclass that records handshakes of `listener` here."""
        return type("ObservedSSLObject", (_ObservedSSLObject,), {"_metrics": self, "_listener": listener})


class _ObservedSSLObject(ssl.SSLObject):
    """Records how the handshake of one connection ends (see the module docstring)."""

    _metrics: TLSMetrics
    _listener: str
    _tls_state = "new"  # new -> started -> done

    def do_handshake(self) -> None:
        if self._tls_state == "new":
            self._tls_state = "started"
            self._metrics.count(self._metrics.handshakes_started, self._listener)
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (ssl.SSLError, OSError) as exc:
            self._finish("unknown", failure_reason(exc))
            raise
        self._finish(self.version() or "unknown", RESUMED if self.session_reused else OK)

    def _finish(self, version: str, outcome: str) -> None:
        if self._tls_state != "done":
            self._tls_state = "done"
            self._metrics.count(self._metrics.handshakes, self._listener, version, outcome)

    def __del__(self) -> None:
        if self._tls_state == "started":
            try:
                self._finish("unknown", ABANDONED)
            except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter exit)
                pass
