"""Record: metrics for every request, after the answer (or refusal) is decided.

The last stage of router.pipeline. One prometheus CollectorRegistry per RouterApp, so
several gateways (tests) in one process do not share counters. Label sets are bounded:
endpoint and deployment names come from the routing table (unknown names are recorded
as "-"), and `code` is one of the fixed ScoringError codes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .context import RequestContext

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)


class Recorder:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "scoregate_requests",
            "Scoring requests answered, by endpoint, deployment, HTTP status and error code.",
            ("endpoint", "deployment", "status", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "scoregate_request_duration_seconds",
            "Time from request arrival to the end of the answer, as seen by the gateway.",
            ("endpoint", "deployment"),
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "scoregate_upstream_duration_seconds",
            "Time spent waiting for and relaying the model's answer.",
            ("endpoint", "deployment"),
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.mirror = Counter(
            "scoregate_mirror_requests",
            "Mirrored copies by endpoint, deployment and outcome (sent, failed, dropped).",
            ("endpoint", "deployment", "outcome"),
            registry=self.registry,
        )
        self.routing_version = Gauge(
            "scoregate_routing_table_version",
            "Version of the routing snapshot the router is using.",
            registry=self.registry,
        )

    def record(self, ctx: RequestContext) -> None:
        endpoint = ctx.endpoint or "-"
        deployment = ctx.deployment or "-"
        self.requests.labels(endpoint, deployment, str(ctx.status), ctx.error_code or "").inc()
        self.latency.labels(endpoint, deployment).observe(ctx.elapsed_s())
        if ctx.upstream_started_ns:
            self.upstream_latency.labels(endpoint, deployment).observe(ctx.upstream_s())
