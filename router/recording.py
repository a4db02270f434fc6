"""Record: metrics for every request, after the answer (or refusal) is decided.

The last stage of router.pipeline. One prometheus CollectorRegistry per RouterApp, so
several gateways (tests) in one process do not share counters. Label sets are bounded:
endpoint and deployment names come from the routing table (unknown names are recorded
as "-"), and `code` is one of the fixed ScoringError codes. Per-deployment levels (in
flight, queued, replicas) are read at scrape time by DeploymentCollector, so the hot
path pays nothing for them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .context import RequestContext
from .loop_metrics import LoopCounter, LoopHistogram

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)
_OVERHEAD_BUCKETS_S = (
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
)


class Recorder:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._counters: dict[tuple, object] = {}
        self._histograms: dict[tuple, tuple] = {}
        r = self.registry
        self.requests = LoopCounter(
            "scoregate_requests",
            "Scoring requests answered, by endpoint, deployment, HTTP status and error code "
            "(each refusal has its own code).",
            ("endpoint", "deployment", "status", "code"), registry=r)
        self.latency = LoopHistogram(
            "scoregate_request_duration_seconds",
            "Time from request arrival to the end of the answer, as seen by the gateway.",
            ("endpoint", "deployment"), buckets=_LATENCY_BUCKETS_S, registry=r)
        self.upstream_latency = LoopHistogram(
            "scoregate_upstream_duration_seconds",
            "Time spent waiting for and relaying the model's answer.",
            ("endpoint", "deployment"), buckets=_LATENCY_BUCKETS_S, registry=r)
        self.overhead = LoopHistogram(
            "scoregate_gateway_overhead_seconds",
            "Time a request spent in the gateway itself, excluding queueing and the model.",
            ("endpoint", "deployment"), buckets=_OVERHEAD_BUCKETS_S, registry=r)
        self.queue_wait = Histogram(
            "scoregate_queue_wait_seconds",
            "Time requests waited in a deployment's admission queue (queued requests only).",
            ("endpoint", "deployment"), buckets=_LATENCY_BUCKETS_S, registry=r)
        self.retries = Counter(
            "scoregate_upstream_retries",
            "Requests sent to another replica because the connection could not be opened.",
            ("endpoint", "deployment"), registry=r)
        self.resends = Counter(
            "scoregate_upstream_resends",
            "Requests sent again on a new connection to the same replica because it closed "
            "a reused keep-alive connection before reading them.",
            ("endpoint", "deployment"), registry=r)
        self.ejections = Counter(
            "scoregate_replica_ejections",
            "Replicas taken out of rotation after consecutive failures.",
            ("endpoint", "deployment"), registry=r)
        self.mirror = Counter(
            "scoregate_mirror_requests",
            "Mirrored copies by endpoint, deployment and outcome (sent, failed, dropped).",
            ("endpoint", "deployment", "outcome"), registry=r)
        self.connection_refusals = Counter(
            "scoregate_connection_refusals",
            "Connections or requests refused before a handler: malformed requests (by status), "
            "header timeouts, connections over the limit.", ("reason",), registry=r)
        self.routing_version = Gauge(
            "scoregate_routing_table_version",
            "Version of the routing snapshot the router is using.", registry=r)

    def record(self, ctx: RequestContext) -> None:
        # Label children are looked up once per label set and kept: .labels() costs more
        # than the observation itself. Label sets are bounded (see the module docstring).
        key = (ctx.endpoint or "-", ctx.deployment or "-", ctx.status, ctx.error_code or "")
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(key[0], key[1], str(key[2]), key[3])
        counter.value += 1
        histograms = self._histograms.get(key[:2])
        if histograms is None:
            histograms = self._histograms[key[:2]] = (
                self.latency.labels(*key[:2]), self.upstream_latency.labels(*key[:2]),
                self.overhead.labels(*key[:2]))
        if not ctx.ended_ns:
            ctx.finish()
        histograms[0].observe(ctx.total_ns / 1e9)
        if ctx.upstream_started_ns:
            histograms[1].observe(ctx.upstream_ns / 1e9)
        if ctx.endpoint is not None:
            histograms[2].observe(ctx.own_ns / 1e9)

    def forget(self, endpoint: str, deployment: str | None = None) -> None:
        """Drop the series of a removed endpoint (or deployment), and their cached children:
        a deleted endpoint is not exported forever, and endpoints that come and go under
        new names do not grow /metrics without bound."""
        def gone(values) -> bool:
            return values[0] == endpoint and (deployment is None or values[1] == deployment)

        for cache in (self._counters, self._histograms):
            for key in [k for k in cache if gone(k)]:
                del cache[key]
        for metric, names in self._per_deployment():
            for values in {v for family in metric.collect() for s in family.samples
                           if gone(v := tuple(s.labels[n] for n in names))}:
                metric.remove(*values)

    def _per_deployment(self):
        """(metric, its label names) of every series labelled endpoint, deployment, …"""
        pair = ("endpoint", "deployment")
        return ((self.requests, (*pair, "status", "code")), (self.latency, pair), (self.upstream_latency, pair),
                (self.overhead, pair), (self.queue_wait, pair), (self.retries, pair), (self.resends, pair),
                (self.ejections, pair), (self.mirror, (*pair, "outcome")))


class DeploymentCollector:
    """Per-deployment levels, computed when Prometheus scrapes."""

    def __init__(self, holder, admission, ejector) -> None:
        self._holder = holder
        self._admission = admission
        self._ejector = ejector

    def collect(self):
        labels = ("endpoint", "deployment")
        in_flight = GaugeMetricFamily("scoregate_deployment_in_flight_requests",
                                      "Requests being answered by the deployment's replicas.", labels=labels)
        queued = GaugeMetricFamily("scoregate_deployment_queued_requests",
                                   "Requests waiting in the deployment's admission queue.", labels=labels)
        replicas = GaugeMetricFamily("scoregate_deployment_ready_replicas",
                                     "Replicas in the routing table.", labels=labels)
        ejected = GaugeMetricFamily("scoregate_deployment_ejected_replicas",
                                    "Replicas currently ejected after failures.", labels=labels)
        capacity = GaugeMetricFamily("scoregate_deployment_queue_capacity_requests",
                                     "Bound of the deployment's admission queue.", labels=labels)
        utilization = GaugeMetricFamily(
            "scoregate_deployment_utilization_ratio",
            "(in flight + queued) / (replicas × max_concurrent_requests_per_instance), now.",
            labels=labels)
        ejected_ids = set(self._ejector.ejected())
        for endpoint in self._holder.current.endpoints.values():
            for deployment in endpoint.deployments.values():
                key = (endpoint.name, deployment.name)
                busy, waiting = self._admission.busy(key), self._admission.queued(key)
                count = len(deployment.replicas)
                slots = count * deployment.request_settings.max_concurrent_requests_per_instance
                in_flight.add_metric(key, busy)
                queued.add_metric(key, waiting)
                capacity.add_metric(key, self._admission.queue_bound(deployment))
                replicas.add_metric(key, count)
                ejected.add_metric(key, sum(1 for r in deployment.replicas if r.replica_id in ejected_ids))
                utilization.add_metric(key, (busy + waiting) / slots if slots else float(busy + waiting))
        return [in_flight, queued, capacity, replicas, ejected, utilization]


class AccessLogCollector:
    """Access-log lines dropped (the writer fell behind, the file could not be written, a
    value JSON cannot carry): read from the log's own count when Prometheus scrapes, so
    the request path only adds to a plain integer."""

    def __init__(self, access_log) -> None:
        self._access_log = access_log

    def collect(self):
        dropped = CounterMetricFamily("scoregate_access_log_dropped_lines",
                                      "Access-log lines dropped instead of written (requests are unaffected).")
        dropped.add_metric((), self._access_log.dropped)
        return [dropped]
