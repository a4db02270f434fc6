"""RequestContext: what one scoring request has learned so far, stage by stage.

Created by router.handlers when a request arrives, filled in by each stage of
router.pipeline, read by router.recording at the end. One per request, so __slots__.
"""

from __future__ import annotations

import re
import time
from random import getrandbits

# fullmatch: "$" would also accept a value ending in a newline.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


# A request id is a random UUID (version 4, variant 10: the fixed "4" and "a"): 120 bits
# from the random module's generator, which is seeded from the OS and reseeded in a forked
# child (as router.tracing's ids). Ids need to be unique and to say nothing, not to be
# secret: uuid4() reads os.urandom per call (~2.5 µs), this costs ~0.33 µs. (A process
# prefix and a counter cost ~0.16 µs, but the counter told any caller how many requests the
# gateway served between two of its own: docs/performance.md, session twelve.)
def new_request_id() -> str:
    h = getrandbits(128).to_bytes(16, "little").hex()
    return "%s-%s-4%s-a%s-%s" % (h[:8], h[8:12], h[13:16], h[17:20], h[20:])


def request_id_from(header_value: bytes | str | None) -> str:
    """Keep the caller's request id when it is short and plain, else make one. The data
    path passes the raw header bytes (None, the usual case, costs no decoding)."""
    if header_value:
        if isinstance(header_value, bytes):
            header_value = header_value.decode("latin-1")  # a sane id is ASCII anyway
        if _SANE_REQUEST_ID.fullmatch(header_value):
            return header_value
    return new_request_id()


class RequestContext:
    __slots__ = (
        "request_id",
        "endpoint",
        "deployment",
        "replica",
        "started_ns",
        "upstream_started_ns",
        "upstream_ended_ns",
        "ended_ns",
        "queued_ns",
        "traceparent",
        "trust_forwarded",
        "status",
        "error_code",
        "bytes_in",
        "bytes_out",
        "client",
        "method",
        "path",
        "total_ns",
        "upstream_ns",
        "own_ns",
    )

    def __init__(self, request_id: str, client: str | None = None, method: str = "", path: str = "") -> None:
        self.request_id = request_id
        self.client = client
        self.method = method
        self.path = path  # as the caller sent it, without the query (router.accesslog writes it)
        self.endpoint: str | None = None
        self.deployment: str | None = None
        self.replica: str | None = None
        self.started_ns = time.perf_counter_ns()
        self.upstream_started_ns = 0
        self.upstream_ended_ns = 0
        self.ended_ns = 0  # stamped by finish() once the answer is decided (router.handlers)
        self.total_ns = self.upstream_ns = self.own_ns = 0  # set by finish()
        self.queued_ns = 0
        self.traceparent: str | None = None
        self.trust_forwarded = False  # the caller is a trusted proxy: keep its X-Forwarded-For
        self.status = 0
        self.error_code: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def finish(self) -> None:
        """Stamp the end and fix the durations (ns) the metrics and the access log read:
        total; upstream, the model's exchange (0 if none started); own, the gateway's
        (total minus queueing minus upstream, at least 0)."""
        ended_ns = self.ended_ns = time.perf_counter_ns()
        self.total_ns = total_ns = ended_ns - self.started_ns
        started_ns = self.upstream_started_ns
        self.upstream_ns = upstream_ns = ((self.upstream_ended_ns or ended_ns) - started_ns) if started_ns else 0
        own_ns = total_ns - self.queued_ns - upstream_ns
        self.own_ns = own_ns if own_ns > 0 else 0

    def server_timing(self, upstream_ns: int | None = None) -> str:
        """`Server-Timing` value: queue, model (until its answer began) and gateway, in ms."""
        now = time.perf_counter_ns()
        model_ns = upstream_ns if upstream_ns is not None else (
            (now - self.upstream_started_ns) if self.upstream_started_ns else 0)
        gateway_ns = now - self.started_ns - self.queued_ns - model_ns
        # Whole microseconds written as "ms.µµµ" with integers: float formatting costs more.
        model_us = (model_ns + 500) // 1000
        gateway_us = (gateway_ns + 500) // 1000 if gateway_ns > 0 else 0
        queue = "queue;dur=%d.%03d" % divmod((self.queued_ns + 500) // 1000, 1000) if self.queued_ns \
            else "queue;dur=0.000"
        return "%s, model;dur=%d.%03d, gateway;dur=%d.%03d" % (
            queue, model_us // 1000, model_us % 1000, gateway_us // 1000, gateway_us % 1000)

