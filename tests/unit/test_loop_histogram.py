"""LoopHistogram exposes exactly what prometheus_client's Histogram does."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from router.histograms import LoopHistogram

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
