"""Live figures per deployment: a bounded ring of samples of the Prometheus metrics.

The gateway's metrics are cumulative (a request counter, a latency histogram) or
instantaneous (in flight, queued, utilization). "Requests/s now" or "p99 over the last
ten seconds" are differences between two moments, so LiveSeries keeps the last few
minutes of samples in a deque with a fixed length: memory stays bounded however long
the gateway runs, and nothing is added to the request path (the numbers come from the
registry the router already keeps). The same samples can be read from an in-process
registry or from the text of `/metrics` (what `scoregate top` sees of a remote gateway).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, str]

REQUESTS = "scoregate_requests_total"
LATENCY_BUCKET = "scoregate_request_duration_seconds_bucket"
GAUGES = {
    "scoregate_deployment_in_flight_requests": "in_flight",
    "scoregate_deployment_queued_requests": "queued",
    "scoregate_deployment_utilization_ratio": "utilization",
    "scoregate_deployment_ready_replicas": "ready_replicas",
}
REPLICAS = "scoregate_deployment_ready_replicas"


def is_error(status: str) -> bool:
    """An answer that failed: the gateway's 5xx or the model's own error (424)."""
    return status.startswith("5") or status == "424"


def is_refusal(status: str) -> bool:
    """Turned away for lack of capacity: 429 (queue full, rate limit) or 503 (no replica)."""
    return status in ("429", "503")


@dataclass
class DeploymentSample:
    requests: float = 0.0
    errors: float = 0.0
    refused: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    in_flight: float = 0.0
    queued: float = 0.0
    utilization: float = 0.0
    ready_replicas: float = 0.0


@dataclass(frozen=True)
class Sample:
    at: float
    deployments: dict[Key, DeploymentSample]


def read_families(families: Iterable) -> dict[Key, DeploymentSample]:
    """Per-deployment figures from metric families (prometheus_client Metric objects)."""
    out: dict[Key, DeploymentSample] = {}
    for family in families:
        for s in family.samples:
            if s.name != REQUESTS and s.name != LATENCY_BUCKET and s.name not in GAUGES:
                continue
            endpoint, deployment = s.labels.get("endpoint"), s.labels.get("deployment")
            if not endpoint or not deployment or endpoint == "-" or deployment == "-":
                continue
            d = out.setdefault((endpoint, deployment), DeploymentSample())
            if s.name == REQUESTS:
                status = s.labels.get("status", "")
                d.requests += s.value
                d.errors += s.value if is_error(status) else 0.0
                d.refused += s.value if is_refusal(status) else 0.0
            elif s.name == LATENCY_BUCKET:
                le = float(s.labels["le"])
                d.buckets[le] = d.buckets.get(le, 0.0) + s.value
            elif s.name == REPLICAS:
                d.ready_replicas = max(d.ready_replicas, s.value)  # every worker has the same table
            else:  # `serve --workers`: each worker's own requests and share, so they add up
                setattr(d, GAUGES[s.name], getattr(d, GAUGES[s.name]) + s.value)
    return out


def sample_registry(registry, at: float) -> Sample:
    """Sample an in-process CollectorRegistry (call it on the event loop's thread)."""
    return Sample(at, read_families(registry.collect()))


def sample_text(text: str, at: float) -> Sample:
    """Sample the Prometheus text exposition of a gateway's `/metrics`."""
    return Sample(at, read_families(text_string_to_metric_families(text)))


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets, as Prometheus computes it; None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # in the open-ended bucket: the highest finite bound
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def _delta(new: float, old: float) -> float:
    """Counter increase; a counter that went down was reset (a restarted gateway)."""
    return new - old if new >= old else new


class LiveSeries:
    """The last `window_s` seconds of samples, at most one per `min_interval_s`."""

    def __init__(self, window_s: float = 120.0, min_interval_s: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(window_s / min_interval_s) + 2)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> bool:
        """Keep `sample` unless the last one is fresher than min_interval_s."""
        if self._samples:
            last = self._samples[-1].at
            if sample.at < last:  # the clock went back: start again
                self._samples.clear()
            elif sample.at - last < self.min_interval_s:
                return False
        self._samples.append(sample)
        return True

    def keys(self) -> set[Key]:
        return set(self._samples[-1].deployments) if self._samples else set()

    def _pair(self, over_s: float) -> tuple[Sample, Sample] | None:
        """(oldest sample within over_s of the newest, newest), if they are two."""
        if len(self._samples) < 2:
            return None
        newest = self._samples[-1]
        for sample in self._samples:
            if newest.at - sample.at <= over_s + 1e-9 and sample is not newest:
                return sample, newest
        return self._samples[-2], newest

    @staticmethod
    def _between(old: Sample, new: Sample, key: Key) -> dict:
        a, b = old.deployments.get(key, DeploymentSample()), new.deployments.get(key, DeploymentSample())
        seconds = max(new.at - old.at, 1e-9)
        requests = _delta(b.requests, a.requests)
        buckets = {le: _delta(count, a.buckets.get(le, 0.0)) for le, count in b.buckets.items()}
        p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
        return {
            "requests_per_s": round(requests / seconds, 3),
            "error_ratio": round(_delta(b.errors, a.errors) / requests, 4) if requests else 0.0,
            "refused_ratio": round(_delta(b.refused, a.refused) / requests, 4) if requests else 0.0,
            "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
            "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        }

    def figures(self, key: Key, over_s: float = 10.0) -> dict:
        """Rates and latency percentiles over the last over_s seconds; levels as of now
        (utilization averaged over the same span, so a burst does not flicker)."""
        pair = self._pair(over_s)
        latest = self._samples[-1].deployments.get(key) if self._samples else None
        out = {"requests_per_s": 0.0, "error_ratio": 0.0, "refused_ratio": 0.0,
               "p50_ms": None, "p99_ms": None}
        if pair is not None:
            out = self._between(pair[0], pair[1], key)
        span = [s.deployments[key].utilization for s in self._samples
                if key in s.deployments and (pair is None or s.at >= pair[0].at)]
        out["utilization"] = round(sum(span) / len(span), 4) if span else 0.0
        out["queued"] = latest.queued if latest else 0.0
        out["in_flight"] = latest.in_flight if latest else 0.0
        out["window_s"] = round(pair[1].at - pair[0].at, 3) if pair else 0.0
        return out

    def series(self, key: Key, smooth_s: float = 5.0) -> dict:
        """Chart points: t (seconds before the newest sample, ≤ 0) and, per point, the
        rates and percentiles over the smooth_s seconds before it, and the levels then."""
        samples = list(self._samples)
        out = {"t": [], "requests_per_s": [], "p50_ms": [], "p99_ms": [], "utilization": [], "queued": []}
        if len(samples) < 2:
            return out
        newest, start = samples[-1].at, 0
        for i in range(1, len(samples)):
            while samples[i].at - samples[start].at > smooth_s + 1e-9 and start < i - 1:
                start += 1
            figures = self._between(samples[start], samples[i], key)
            level = samples[i].deployments.get(key, DeploymentSample())
            out["t"].append(round(samples[i].at - newest, 2))
            for name in ("requests_per_s", "p50_ms", "p99_ms"):
                out[name].append(figures[name])
            out["utilization"].append(round(level.utilization, 4))
            out["queued"].append(level.queued)
        return out
