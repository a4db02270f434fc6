"""The arithmetic of scenario verdicts: windows, failure times, step and burst rules."""

import asyncio

import pytest

from loadtests.scenarios import SCENARIOS
from loadtests.scenarios.base import ScenarioReport, facts_table
from loadtests.scenarios.burst import recovery_second
from loadtests.scenarios.step import judge
from loadtests.scenarios.steady import worst_second
from loadtests.scenarios.timeline import EventRecorder, Watch, outcomes_text, window


def recorder() -> EventRecorder:
    """3 s of 10 requests/s: 2 ms, except second 1 (50 ms, two 503 and one timeout)."""
    rec = EventRecorder()
    rec.t0 = 100.0
    for second in range(3):
        for i in range(10):
            start = 100.0 + second + i * 0.1
            latency = 0.05 if second == 1 else 0.002
            rec.on_start(start, 0.0)
            if second == 1 and i < 2:
                rec.on_done(start, start + latency, 503, None)
            elif second == 1 and i == 2:
                rec.on_done(start, start + latency, None, "timeout", "TimeoutError")
            else:
                rec.on_done(start, start + latency, 200, None)
    return rec


def test_failures_are_kept_with_their_time():
    rec = recorder()
    assert len(rec.failures) == 3
    assert rec.failures_between(1.0, 2.0) == {"503": 2, "timeout": 1}
    assert rec.failures_between(0.0, 1.0) == {}
    assert rec.last_failure_after(1.0) == pytest.approx(1.25, abs=1e-6)
    assert rec.last_failure_after(2.0) is None
    assert outcomes_text(rec.failures_between(0)) == "503×2, timeout×1"
    assert outcomes_text({}) == "none"


def test_window_merges_whole_seconds():
    rec = recorder()
    w = window(rec, 1.0, 2.0)
    assert (w["from_s"], w["to_s"], w["completed"], w["failed"]) == (1, 2, 10, 3)
    assert w["p50_ms"] == pytest.approx(50, rel=0.02)
    assert window(rec, 0.5, 2.5)["completed"] == 30  # floor / ceil to whole seconds
    assert window(rec, 0, 1)["p99_ms"] == pytest.approx(2, rel=0.02)
    assert window(rec, 7, 8)["completed"] == 0


def test_worst_second_and_step_verdicts():
    series = [{"second": 0, "completed": 5, "p99_ms": 2.0}, {"second": 1, "completed": 0, "p99_ms": 0},
              {"second": 2, "completed": 5, "p99_ms": 9.0}]
    assert worst_second(series)["second"] == 2
    assert worst_second([]) is None
    ok = {"rate": 100, "throughput": 99.0, "completed": 99, "failed": 0, "p99_ms": 4.0}
    assert judge(ok, 3.0) is None
    assert "failed" in judge({**ok, "failed": 5}, 3.0)
    assert "completed 80" in judge({**ok, "throughput": 80.0}, 3.0)
    assert "p99" in judge({**ok, "p99_ms": 40.0}, 3.0)
    assert judge({**ok, "p99_ms": 2.5}, 0.2) is None  # sub-ms baselines: 1 ms floor


def test_burst_recovery_is_the_first_normal_second_after_it():
    series = [{"second": s, "completed": 10, "p99_ms": p}
              for s, p in enumerate([2.0, 2.0, 80.0, 30.0, 6.0, 2.0])]
    assert recovery_second(series, 3, 2.0) == 4  # 6 ms <= 2 ms + 5 ms slack
    assert recovery_second(series, 3, 0.5) == 5  # limit 5.5 ms: 6 ms is not back yet
    assert recovery_second(series[:4], 3, 2.0) is None


async def test_watch_follows_the_load():
    rec = EventRecorder()
    load = asyncio.get_running_loop().create_future()
    watch = Watch(rec, load, grace=0.2)
    assert watch.running and watch.active and watch.now() == 0.0
    waiting = asyncio.ensure_future(watch.until(0.05))
    await asyncio.sleep(0.02)
    rec.t0 = __import__("time").perf_counter()
    assert await waiting is True and watch.now() >= 0.05
    load.set_result(None)
    await asyncio.sleep(0)
    assert not watch.running and watch.active
    await asyncio.sleep(0.25)  # the 0.2 s grace running out is what is checked
    assert not watch.active
    assert await watch.until(10.0) is False


def test_report_markdown_and_registry():
    assert set(SCENARIOS) == {"steady", "step", "burst", "rollout", "replica-failure", "autoscale"}
    for module in SCENARIOS.values():
        assert module.HELP and module.__doc__ and callable(module.run)
    report = ScenarioReport("demo", "all good", {"x": 1}, [facts_table([("a|b", 1)])],
                            [{"t_s": 1.5, "event": "something"}])
    text = report.markdown()
    assert text.startswith("# Scenario: demo\n\n**all good**")
    assert "| a\\|b | 1 |" in text and "| 1.50 | something |" in text
    assert report.to_dict()["run"] is None
