"""Percentiles of known distributions, merging and the wire format."""

import json
import random

import pytest

from loadtests.histogram import HIGHEST_US, LatencyHistogram


def uniform_ms(lo: int = 1, hi: int = 1000) -> LatencyHistogram:
    h = LatencyHistogram()
    for ms in range(lo, hi + 1):
        h.record_us(ms * 1000)
    return h


@pytest.mark.parametrize("p,expected_ms", [(50, 500), (90, 900), (99, 990), (99.9, 999)])
def test_uniform_percentiles_within_one_percent(p, expected_ms):
    h = uniform_ms()
    assert h.percentile_ms(p) == pytest.approx(expected_ms, rel=0.01)


def test_uniform_summary():
    s = uniform_ms().summary()
    assert s["count"] == 1000
    assert s["mean_ms"] == pytest.approx(500.5, rel=0.01)
    assert s["max_ms"] == pytest.approx(1000, rel=0.001)
    assert s["min_ms"] == pytest.approx(1, rel=0.001)
    assert set(s) >= {"p50_ms", "p90_ms", "p99_ms", "p99.9_ms"}


def test_exponential_matches_exact_percentiles():
    rng = random.Random(6)
    samples = sorted(rng.expovariate(1 / 0.005) for _ in range(20_000))  # mean 5 ms
    h = LatencyHistogram()
    for s in samples:
        h.record_seconds(s)
    for p in (50, 90, 99, 99.9):
        exact = samples[min(len(samples) - 1, int(len(samples) * p / 100))] * 1000
        assert h.percentile_ms(p) == pytest.approx(exact, rel=0.01)
    assert h.max_us == pytest.approx(samples[-1] * 1e6, rel=0.001)


def test_bimodal_tail_is_not_averaged_away():
    h = LatencyHistogram()
    h.record_us(1_000, count=990)       # 990 fast requests at 1 ms
    h.record_us(1_000_000, count=10)    # 10 stalled for 1 s
    assert h.percentile_ms(50) == pytest.approx(1, rel=0.01)
    assert h.percentile_ms(99) == pytest.approx(1, rel=0.01)
    assert h.percentile_ms(99.9) == pytest.approx(1000, rel=0.01)


def test_merge_equals_recording_everything_in_one():
    a, b = uniform_ms(1, 500), uniform_ms(501, 1000)
    whole = uniform_ms()
    merged = LatencyHistogram.merged([a, b])
    assert merged.count == whole.count == 1000
    for p in (50, 90, 99, 99.9, 100):
        assert merged.percentile_us(p) == whole.percentile_us(p)
    assert a.count == 500  # inputs untouched


def test_merge_into_empty_and_with_empty():
    h = uniform_ms()
    assert LatencyHistogram().merge(h).percentile_us(50) == h.percentile_us(50)
    assert h.merge(LatencyHistogram()).count == 1000


def test_encode_decode_round_trip_through_json():
    h = uniform_ms()
    h.record_us(HIGHEST_US * 2)
    text = json.loads(json.dumps(h.encode()))
    back = LatencyHistogram.decode(text)
    assert back.count == h.count == 1001
    assert back.overflow == 1
    for p in (50, 99, 99.9):
        assert back.percentile_us(p) == h.percentile_us(p)
    assert back.max_us == h.max_us


def test_empty_histogram_is_all_zero_and_encodable():
    h = LatencyHistogram()
    assert h.summary()["count"] == 0
    assert h.percentile_ms(99) == 0 and h.max_us == 0 and h.mean_us == 0
    assert LatencyHistogram.decode(h.encode()).count == 0
    assert h.cdf_points() == []


def test_out_of_range_values_are_clamped_and_counted():
    h = LatencyHistogram()
    h.record_us(-5)
    h.record_seconds(120)
    assert h.count == 2
    assert h.overflow == 1
    assert h.min_us == 0
    assert h.max_us == pytest.approx(HIGHEST_US, rel=0.001)
    assert h.summary()["overflow"] == 1


def test_cdf_points_are_monotone_and_end_at_one():
    pts = uniform_ms().cdf_points()
    assert pts[-1][1] == pytest.approx(1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(pts, pts[1:]))
    assert pts[len(pts) // 2][0] == pytest.approx(500, rel=0.05)
