"""LoopHistogram and LoopCounter expose exactly what prometheus_client's Histogram and Counter do."""

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.00005, 0.0005, 0.001, 0.02, 1.0, 30.0)
VALUES = (0.00001, 0.00005, 0.0004, 0.001, 0.0011, 0.5, 1.0, 29.0, 31.0, 120.0)


def exposition(kind) -> list[str]:
    registry = CollectorRegistry()
    histogram = kind("scoregate_x_seconds", "x", ("endpoint", "deployment"), buckets=BUCKETS, registry=registry)
    for value in VALUES:
        histogram.labels("ep", "blue").observe(value)
    histogram.labels("ep", "green").observe(0.001)
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if "_created" not in line)


def test_same_buckets_counts_and_sums_as_prometheus_client():
    assert exposition(LoopHistogram) == exposition(Histogram)


def test_bucket_bounds_are_inclusive_and_remove_drops_a_child():
    registry = CollectorRegistry()
    histogram = LoopHistogram("h", "h", ("a",), buckets=(1.0, 2.0), registry=registry)
    histogram.labels("x").observe(1.0)
    histogram.labels("x").observe(2.5)
    value = registry.get_sample_value
    assert value("h_bucket", {"a": "x", "le": "1.0"}) == 1
    assert value("h_bucket", {"a": "x", "le": "2.0"}) == 1
    assert value("h_bucket", {"a": "x", "le": "+Inf"}) == 2 and value("h_sum", {"a": "x"}) == 3.5
    histogram.remove("x")
    assert value("h_count", {"a": "x"}) is None


def counter_exposition(kind) -> list[str]:
    registry = CollectorRegistry()
    counter = kind("scoregate_y", "y", ("endpoint", "status"), registry=registry)
    counter.labels("ep", 200).inc()
    counter.labels("ep", "200").inc(2.5)
    counter.labels("ep", "503").inc()
    return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


def test_counter_same_exposition_as_prometheus_client():
    assert counter_exposition(LoopCounter) == counter_exposition(Counter)
    assert 'scoregate_y_total{endpoint="ep",status="200"} 3.5' in counter_exposition(LoopCounter)


def test_counter_has_created_samples_and_refuses_to_go_down():
    registry = CollectorRegistry()
    counter = LoopCounter("c", "c", ("a",), registry=registry)
    counter.labels("x").inc()
    assert registry.get_sample_value("c_created", {"a": "x"}) > 0
    with pytest.raises(ValueError):
        counter.labels("x").inc(-1)
    assert registry.get_sample_value("c_total", {"a": "x"}) == 1
