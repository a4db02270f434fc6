"""Prometheus metrics for TLS: handshakes, certificate expiry, reloads.

A listener whose TLS the event loop runs is observed through
`SSLContext.sslobject_class`, the documented hook for the objects asyncio (and uvloop)
create per TLS connection: our subclass records how `do_handshake()` ends. The scoring
port drives its handshakes itself (router.tls_termination) and reports to the same
HandshakeCounts, found through `handshake_counts(context)`. What they can and cannot see:

- counted as `ok` / `resumed`: every handshake that completes, by TLS version;
- counted by reason: every handshake OpenSSL refuses while reading the client's
  messages (old protocol, no shared cipher, plain HTTP, missing or untrusted client
  certificate, an alert from the client);
- counted as `abandoned`: connections that began a handshake and were dropped before
  it ended (client closed or timed out, TCP health checks, a client that rejected
  our certificate without its alert reaching us); the scoring port records it when
  the connection ends, the event loop's TLS when the connection object is freed (a
  moment later);
- a connection closed before its first byte (a TCP health check): the scoring port
  counts no handshake for it (docs/tls.md); the event loop's TLS, which begins the
  handshake as the connection is made, counts it as begun and abandoned;
- not seen at all: connections refused by the kernel (backlog full).
"""

from __future__ import annotations

import ssl
import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

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


class HandshakeCounts:
    """The handshake counters of one listener, as plain integers.

    Every handshake adds to them, so they take none of prometheus_client's locks: they
    are only written on the event loop's thread (handshakes and the SNI callback run
    there) and TLSMetrics reads them at scrape time. Each count is a two-item list
    [count, created] (`_created` as prometheus_client reports it); a handshake path may
    keep a reference to one and add to it directly.
    """

    __slots__ = ("listener", "started", "ended", "selected")

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self.started = [0, time.time()]  # TCP connections that began a handshake
        self.ended: dict[tuple[str, str], list] = {}  # (version, outcome) -> [count, created]
        self.selected: dict[tuple[str, str], list] = {}  # (certificate, match) -> [count, created]

    def end(self, version: str, outcome: str) -> None:
        _count(self.ended, (version, outcome))[0] += 1

    def succeeded(self, version: str | None, resumed: bool) -> None:
        key = (version or "unknown", RESUMED if resumed else OK)
        (self.ended.get(key) or _count(self.ended, key))[0] += 1  # one call per handshake

    def failed(self, exc: BaseException) -> None:
        self.end("unknown", failure_reason(exc))

    def abandoned(self) -> None:
        self.end("unknown", ABANDONED)

    def selection(self, certificate: str, match: str) -> list:
        """The count of handshakes that chose `certificate` by `match` (to add to)."""
        return _count(self.selected, (certificate, match))


def _count(counts: dict[tuple[str, str], list], key: tuple[str, str]) -> list:
    entry = counts.get(key)
    if entry is None:
        entry = counts[key] = [0, time.time()]
    return entry


class TLSMetrics:
    """The TLS metrics, registered in `registry` (one TLSMetrics per registry; share it
    between listeners, which are told apart by the `listener` label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._listeners: dict[str, HandshakeCounts] = {}
        registry.register(_HandshakeCollector(self._listeners))
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

    def handshakes(self, listener: str) -> HandshakeCounts:
        counts = self._listeners.get(listener)
        if counts is None:
            counts = self._listeners[listener] = HandshakeCounts(listener)
        return counts

    def set_expiry(self, name: str, moment: datetime) -> None:
        self.expiry.labels(name=name).set(moment.timestamp())

    def reloaded(self, name: str, ok: bool) -> None:
        self.reloads.labels(name=name, outcome="success" if ok else "failure").inc()
        self.reload_failing.labels(name=name).set(0 if ok else 1)

    def observing_sslobject_class(self, listener: str) -> type[ssl.SSLObject]:
        """An SSLObject subclass that records handshakes of `listener` here: for the
        listeners whose TLS the event loop runs (`create_server(ssl=...)`)."""
        return type("ObservedSSLObject", (_ObservedSSLObject,), {"handshake_counts": self.handshakes(listener)})


def handshake_counts(context: ssl.SSLContext) -> HandshakeCounts | None:
    """The counts a context's handshakes go to (TLSMetrics.observing_sslobject_class), for
    a server that drives the handshake on its own (router.tls_termination)."""
    return getattr(context.sslobject_class, "handshake_counts", None)


class _HandshakeCollector:
    """Exposes every listener's HandshakeCounts, as prometheus_client's Counter would."""

    def __init__(self, listeners: dict[str, HandshakeCounts]) -> None:
        self._listeners = listeners

    def describe(self):
        return list(self._families())

    def collect(self):
        families = self._families()
        started, ended, selected = families
        for counts in list(self._listeners.values()):
            name = counts.listener
            started.add_metric([name], counts.started[0], created=counts.started[1])
            for (version, outcome), (value, created) in list(counts.ended.items()):
                ended.add_metric([name, version, outcome], value, created=created)
            for (certificate, match), (value, created) in list(counts.selected.items()):
                selected.add_metric([name, certificate, match], value, created=created)
        return families

    @staticmethod
    def _families():
        return (
            CounterMetricFamily(
                "scoregate_tls_handshakes_started", "TCP connections that began a TLS handshake.",
                labels=["listener"]),
            CounterMetricFamily(
                "scoregate_tls_handshakes",
                "TLS handshakes that ended, by listener, TLS version (unknown when it failed "
                "before one was agreed) and outcome (ok, resumed, or why it failed).",
                labels=["listener", "version", "outcome"]),
            CounterMetricFamily(
                "scoregate_tls_certificate_selections",
                "Certificates chosen by SNI, by certificate and match (exact, wildcard, default).",
                labels=["listener", "name", "match"]),
        )


class _ObservedSSLObject(ssl.SSLObject):
    """Records how the handshake of one connection ends (see the module docstring)."""

    handshake_counts: HandshakeCounts
    _tls_state = "new"  # new -> started -> done

    def do_handshake(self) -> None:
        if self._tls_state == "new":
            self._tls_state = "started"
            self.handshake_counts.started[0] += 1
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (ssl.SSLError, OSError) as exc:
            if self._tls_state != "done":
                self._tls_state = "done"
                self.handshake_counts.failed(exc)
            raise
        if self._tls_state != "done":
            self._tls_state = "done"
            self.handshake_counts.succeeded(self.version(), self.session_reused)

    def __del__(self) -> None:
        if self._tls_state == "started":
            self._tls_state = "done"
            try:
                self.handshake_counts.abandoned()
            except Exception:  # noqa: BLE001 - never raise from a finalizer (interpreter exit)
                pass
