"""The autoscaling policy on recorded utilization traces (pure function, no clock)."""

from __future__ import annotations

import pytest

from serving.controller.autoscaler import AutoscaleContext, AutoscaleState, decide


def run_trace(levels, *, start=1, lo=1, hi=5, target=0.7, slots=1, down_after=20):
    """Feed one average level per polling interval; return the replica count after each."""
    replicas, state, out = start, AutoscaleState(), []
    for level in levels:
        decision = decide(AutoscaleContext(replicas, lo, hi, target, level, slots, state, down_after))
        replicas, state = decision.replicas, decision.state
        out.append(replicas)
    return out


def test_above_target_scales_up_at_once_to_come_back_under_it():
    # 1 replica at 100% + 1.5 queued: 2.5 requests → ceil(2.5 / 0.7) = 4 replicas in one step.
    assert run_trace([2.5]) == [4]
    # With 4 slots per replica, 5 requests need ceil(5 / 2.8) = 2 replicas.
    assert run_trace([5.0], slots=4) == [2]


def test_never_above_max_or_below_min():
    assert run_trace([100.0]) == [5]
    assert run_trace([0.0] * 60, start=3, lo=2) == [3] * 19 + [2] * 41


def test_scale_down_waits_about_20_intervals_of_low_utilization():
    trace = [0.1] * 25
    result = run_trace(trace, start=4)
    assert result[:19] == [4] * 19 and result[19] == 1


def test_a_single_busy_interval_resets_the_scale_down_count():
    trace = [0.1] * 15 + [2.0] + [0.1] * 15
    result = run_trace(trace, start=3)
    assert result[15] == 3  # 2.0 / 0.7 → 3 needed: no change, and the low count restarts
    assert set(result) == {3}


def test_scale_down_goes_to_the_peak_need_of_the_low_stretch():
    # Load comes and goes between 0.5 and 1.3 requests: 2 replicas are needed at peaks.
    trace = [0.5, 1.3] * 10
    result = run_trace(trace, start=5)
    assert result[-1] == 2


@pytest.mark.parametrize("level, expected", [(0.7, 1), (0.71, 2), (1.4, 2), (1.41, 3)])
def test_target_boundary(level, expected):
    assert run_trace([level], start=1) == [expected]


def test_recorded_ramp_then_idle():
    # A ramp from idle to 3 busy replicas' worth of work, a plateau, then idle again.
    ramp = [0.2, 0.5, 0.9, 1.4, 2.0, 2.6, 2.6, 2.6]
    result = run_trace(ramp + [0.0] * 22, start=1)
    assert result[:8] == [1, 1, 2, 2, 3, 4, 4, 4]
    assert result[8:27] == [4] * 19  # patience
    assert result[27] == 1
