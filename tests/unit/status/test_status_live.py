"""LiveSeries and the metric sampling behind the status page's live figures: rates and
percentiles over the last seconds, counter resets, bounded memory, and the same
numbers from an in-process registry as from the text of /metrics."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from router.recording import Recorder
from serving.status.live import LiveSeries, Sample, quantile, read_families, sample_registry, sample_text

KEY = ("shop", "blue")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer(recorder: Recorder, n: int, seconds: float, status: str = "200", code: str = "",
           deployment: str = "blue") -> None:
    for _ in range(n):
        recorder.requests.labels("shop", deployment, status, code).inc()
        recorder.latency.labels("shop", deployment).observe(seconds)


def test_quantile_follows_prometheus_histogram_quantile():
    buckets = {0.1: 0.0, 0.2: 10.0, 0.5: 10.0, math.inf: 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.15)
    assert quantile(0.99, buckets) == pytest.approx(0.199)
    assert quantile(0.5, {0.1: 0.0, math.inf: 4.0}) == 0.1  # all above the last bound
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.5, {}) is None


def test_sampling_reads_requests_errors_refusals_and_latency():
    recorder = Recorder()
    answer(recorder, 8, 0.004)
    answer(recorder, 1, 0.3, "502", "ModelConnectionError")
    answer(recorder, 1, 0.001, "429", "QueueFull")
    answer(recorder, 1, 0.01, "424", "ModelError")
    recorder.requests.labels("-", "-", "404", "EndpointNotFound").inc()  # unknown endpoint: not a deployment
    sample = sample_registry(recorder.registry, 1.0)
    assert set(sample.deployments) == {KEY}
    blue = sample.deployments[KEY]
    assert (blue.requests, blue.errors, blue.refused) == (11, 2, 1)
    assert blue.buckets[math.inf] == 11 and blue.buckets[0.005] == 9


def test_text_of_metrics_gives_the_same_sample_as_the_registry():
    recorder = Recorder()
    answer(recorder, 5, 0.02)
    answer(recorder, 2, 0.02, "503", "NoReadyReplica", deployment="green")
    from_registry = sample_registry(recorder.registry, 1.0).deployments
    from_text = sample_text(generate_latest(recorder.registry).decode(), 1.0).deployments
    assert from_text == from_registry


def test_rates_and_percentiles_cover_only_the_last_window():
    recorder, clock = Recorder(), Clock()
    live = LiveSeries(window_s=60, min_interval_s=1, clock=clock)
    live.add(sample_registry(recorder.registry, clock()))
    answer(recorder, 100, 0.8)  # a slow minute long ago...
    for second in range(1, 31):
        clock.now = float(second)
        if second > 20:
            answer(recorder, 20, 0.004)  # ...then 20 fast requests a second for the last 10 s
        live.add(sample_registry(recorder.registry, clock()))
    figures = live.figures(KEY, over_s=10)
    assert figures["requests_per_s"] == pytest.approx(20)
    assert figures["window_s"] == 10
    assert figures["p99_ms"] < 5 and figures["p50_ms"] < 5
    assert figures["error_ratio"] == 0
    over_all = live.figures(KEY, over_s=60)
    assert over_all["p99_ms"] > 500


def test_levels_are_averaged_or_latest():
    clock = Clock()
    live = LiveSeries(window_s=60, min_interval_s=1, clock=clock)
    for second, (util, queued) in enumerate([(0.5, 0), (1.5, 4), (1.0, 2)]):
        live.add(Sample(float(second), {KEY: _levels(util, queued)}))
    figures = live.figures(KEY, over_s=10)
    assert figures["utilization"] == pytest.approx(1.0)
    assert figures["queued"] == 2


def _levels(utilization: float, queued: float):
    from serving.status.live import DeploymentSample

    return DeploymentSample(utilization=utilization, queued=queued)


def test_counter_reset_counts_from_zero():
    from serving.status.live import DeploymentSample

    live = LiveSeries(window_s=60, min_interval_s=1)
    live.add(Sample(0.0, {KEY: DeploymentSample(requests=1000)}))
    live.add(Sample(10.0, {KEY: DeploymentSample(requests=50)}))  # the gateway restarted
    assert live.figures(KEY)["requests_per_s"] == pytest.approx(5)


def test_memory_is_bounded_and_samples_are_spaced():
    live = LiveSeries(window_s=30, min_interval_s=1)
    for i in range(10_000):
        live.add(Sample(i * 0.5, {KEY: _levels(0.1, 0)}))
    assert len(live) <= 32
    series = live.series(KEY)
    assert len(series["t"]) == len(live) - 1 and series["t"][-1] == 0 and min(series["t"]) >= -31
    assert not live.add(Sample(4999.5, {}))  # too soon after the last one kept (4999.0)


def test_a_clock_that_goes_back_starts_again():
    live = LiveSeries(window_s=30, min_interval_s=1)
    for i in range(5):
        live.add(Sample(100.0 + i, {}))
    live.add(Sample(3.0, {}))
    assert len(live) == 1


def test_series_points_have_rates_and_percentiles():
    recorder, clock = Recorder(), Clock()
    live = LiveSeries(window_s=60, min_interval_s=1, clock=clock)
    for second in range(6):
        clock.now = float(second)
        answer(recorder, 10, 0.03)
        live.add(sample_registry(recorder.registry, clock()))
    series = live.series(KEY, smooth_s=2)
    assert series["t"] == [-4.0, -3.0, -2.0, -1.0, 0.0]
    assert series["requests_per_s"] == pytest.approx([10] * 5)
    assert all(20 < p < 50 for p in series["p50_ms"])
    assert len(series["utilization"]) == len(series["queued"]) == 5


def test_unknown_deployment_has_quiet_figures():
    live = LiveSeries()
    figures = live.figures(("nope", "nope"))
    assert figures["requests_per_s"] == 0 and figures["p99_ms"] is None
    assert read_families([]) == {}



class Levels:
    """What router.recording.DeploymentCollector reports for KEY in one worker."""

    def __init__(self, in_flight: int, queued: int, slots: int = 4, replicas: int = 2) -> None:
        self.values = {"in_flight_requests": in_flight, "queued_requests": queued,
                       "utilization_ratio": (in_flight + queued) / slots, "ready_replicas": replicas}

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        for name, value in self.values.items():
            gauge = GaugeMetricFamily(f"scoregate_deployment_{name}", "level", labels=("endpoint", "deployment"))
            gauge.add_metric(KEY, value)
            yield gauge


def test_with_several_workers_the_levels_are_the_sum_of_theirs():
    """`serve --workers N` labels each worker's series with `worker`: each holds its own
    requests in flight and queued, and its own share of the utilization, so the status
    page's levels are their sums (as the rates already are), not the last worker's."""
    from serving.workers.metrics import merge_worker_metrics

    texts = {}
    for worker, (in_flight, queued) in enumerate([(1, 0), (2, 1)]):
        recorder = Recorder()
        answer(recorder, 4, 0.01)
        recorder.registry.register(Levels(in_flight, queued))
        texts[worker] = generate_latest(recorder.registry)
    blue = read_families(merge_worker_metrics(texts))[KEY]
    assert (blue.requests, blue.in_flight, blue.queued) == (8, 3, 1)
    assert blue.utilization == 1.0
    assert blue.ready_replicas == 2  # the same routing table in every worker
