"""Recorder accounting, merging across workers, and the result files."""

import json
import pickle

import pytest

from loadtests.recorder import Recorder
from loadtests.results import RunResult, comparison_markdown

CONFIG = {"mode": "open", "method": "POST", "url": "http://127.0.0.1:1/score",
          "profile": "constant:100", "duration_s": 2.0, "connections": 8,
          "max_in_flight": 50, "processes": 1, "timeout_s": 1.0,
          "behind_threshold_ms": 25.0}


def fill(rec: Recorder, n_ok: int, n_500: int = 0, n_timeout: int = 0,
         latency: float = 0.002, lateness: float = 0.0001) -> Recorder:
    t0 = rec.t0
    for i in range(n_ok + n_500 + n_timeout):
        start = t0 + i * 0.01
        rec.on_scheduled(i * 0.01)
        rec.on_start(start, lateness)
        if i < n_ok:
            rec.on_done(start, start + latency, 200, None)
        elif i < n_ok + n_500:
            rec.on_done(start, start + latency, 500, None)
        else:
            rec.on_done(start, start + 1.0, None, "timeout", "TimeoutError")
    rec.elapsed = 2.0
    return rec


def test_recorder_counts_statuses_and_error_kinds():
    rec = fill(Recorder(100.0), n_ok=150, n_500=30, n_timeout=20)
    assert (rec.sent, rec.completed, rec.ok, rec.failed) == (200, 200, 150, 50)
    assert rec.status == {200: 150, 500: 30}
    assert rec.errors == {"timeout": 20}
    assert rec.error_samples["timeout"].startswith("TimeoutError")
    assert rec.latency_all.count == 200 and rec.latency_ok.count == 150
    assert rec.in_flight == 0
    assert rec.counts() == (200, 200, 50, 0, 0)


def test_series_is_per_second_with_percentiles():
    rec = fill(Recorder(0.0), n_ok=200, latency=0.004)
    series = rec.series()
    assert [s["second"] for s in series] == [0, 1]
    assert [s["scheduled"] for s in series] == [100, 100]
    assert [s["completed"] for s in series] == [100, 100]
    assert series[0]["p50_ms"] == pytest.approx(4, rel=0.02)


def test_snapshot_survives_pickle_and_merges():
    a = fill(Recorder(0.0), n_ok=100, n_500=10)
    b = fill(Recorder(0.0), n_ok=50, n_timeout=5)
    b.on_drop("in_flight_cap", 3)
    parts = [Recorder.from_snapshot(pickle.loads(pickle.dumps(r.snapshot()))) for r in (a, b)]
    m = Recorder.merge(parts)
    assert (m.sent, m.ok, m.failed) == (165, 150, 15)
    assert m.status == {200: 150, 500: 10}
    assert m.errors == {"timeout": 5}
    assert m.dropped == {"in_flight_cap": 3}
    assert m.latency_all.count == 165
    assert sum(s["completed"] for s in m.series()) == 165
    assert sum(s["scheduled"] for s in m.series()) == 165


def test_result_json_round_trip(tmp_path):
    rec = fill(Recorder(0.0), n_ok=190, n_500=10)
    result = RunResult.from_recorder(rec, "direct", CONFIG, started_at=0)
    paths = result.write(tmp_path)
    assert [p.name for p in paths] == ["results.json", "summary.md"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["requests"]["sent"] == 200
    assert data["rates"]["target"] == pytest.approx(100.0)
    assert data["rates"]["achieved"] == pytest.approx(100.0)
    assert data["status"] == {"200": 190, "500": 10}
    assert data["latency_ms"]["ok"]["count"] == 190
    assert data["generator"]["fell_behind"] is False
    back = RunResult.load(tmp_path)
    assert back.latency_all.percentile_us(99) == result.latency_all.percentile_us(99)
    assert back.series == result.series and back.status == result.status


def test_load_refuses_other_json(tmp_path):
    (tmp_path / "results.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError):
        RunResult.load(tmp_path)


def test_summary_markdown_has_tables():
    rec = fill(Recorder(0.0), n_ok=10, n_timeout=2)
    text = RunResult.from_recorder(rec, "gw", CONFIG).summary_markdown()
    assert text.startswith("# Load test: gw")
    assert "| latency (ms) | count | mean | p50 | p90 | p99 | p99.9 | max |" in text
    assert "| 200 | 10 |" in text
    assert "| timeout | 2 | TimeoutError |" in text
    assert "kept its schedule" in text


def test_behind_reasons():
    rec = fill(Recorder(0.0), n_ok=10, lateness=0.2)
    rec.on_drop("in_flight_cap", 4)
    rec.on_drop("out_of_time", 2)
    result = RunResult.from_recorder(rec, "x", CONFIG)
    reasons = result.behind_reasons()
    assert result.fell_behind
    assert any("lateness" in r for r in reasons)
    assert any("4 requests dropped at the in-flight cap (50)" in r for r in reasons)
    assert any("2 scheduled" in r for r in reasons)
    assert "**generator fell behind**" in result.summary_markdown()
    closed = RunResult.from_recorder(rec, "x", dict(CONFIG, mode="closed"))
    assert not closed.fell_behind and closed.target_rate is None


def test_comparison_has_deltas_against_the_first_run():
    direct = RunResult.from_recorder(fill(Recorder(0.0), 100, latency=0.001), "direct", CONFIG)
    gateway = RunResult.from_recorder(fill(Recorder(0.0), 100, latency=0.003), "gateway", CONFIG)
    text = comparison_markdown([direct, gateway])
    assert "| direct | open |" in text and "| gateway | open |" in text
    assert "| gateway | +2.00 | +2.00 | +2.00 | +2.00 |" in text


def test_a_latency_row_without_samples_shows_dashes_not_zeros():
    rec = fill(Recorder(0.0), n_ok=0, n_timeout=3)  # every request failed: no ok latency
    result = RunResult.from_recorder(rec, "dead", CONFIG)
    text = result.summary_markdown()
    assert "| ok | 0 | - | - | - | - | - | - |" in text
    assert "| all | 3 | 1000." in text  # the failed ones were measured
    row = next(line for line in comparison_markdown([result]).splitlines()
               if line.startswith("| dead |"))
    assert "0.00" not in row and "| - | - | - | - | - |" in row


def _one_request_result(profile: str, duration: float, elapsed: float) -> RunResult:
    """`completed` requests finished within `elapsed` s of a `duration` s run."""
    rec = fill(Recorder(0.0), n_ok=2)
    rec.elapsed = elapsed
    return RunResult.from_recorder(rec, "low", dict(CONFIG, profile=profile, duration_s=duration))


def test_throughput_is_over_the_run_not_up_to_the_last_completion():
    # --rate 0.5 --duration 4: starts at 0 s and 2 s, the last answer at ~2 s
    result = _one_request_result("constant:0.5", 4.0, 2.0)
    assert result.throughput == pytest.approx(0.5)
    assert result.target_rate == pytest.approx(0.5)
    assert "throughput 0.5 req/s over 4.00 s" in result.summary_markdown()
    # a drain past the end still counts: the window is the longer of the two
    assert _one_request_result("constant:0.5", 4.0, 5.0).throughput == pytest.approx(0.4)


def test_target_is_the_rate_asked_for():
    result = _one_request_result("constant:0.0001", 1.0, 0.01)
    assert result.target_rate == pytest.approx(0.0001)
    assert result.throughput == pytest.approx(2.0)
    text = result.summary_markdown()
    assert "(target 0.0001 req/s)" in text and "of 0.0001 targeted" in text
    assert result.to_dict()["rates"]["target"] == pytest.approx(0.0001)
