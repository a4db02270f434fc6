"""The autoscaling loop around the pure policy (serving/controller/autoscaling.py), on a
fake clock and a utilization source of plain values: no signal decides nothing, an
explicit instance_count is where it continues from, `initial` (a new leader on a
cluster) is where it starts."""

from __future__ import annotations

from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry

from serving.controller.autoscaling import Autoscaling
from serving.resources import Deployment, ScaleSettings

SCALED = Deployment("blue", "iris", instance_count=2,
                    scale_settings=ScaleSettings("target_utilization", 1, 4, 70, polling_interval=1))


@dataclass
class Window:
    average_level: float
    window_s: float = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loop(levels: dict, clock: Clock, **kwargs) -> Autoscaling:
    return Autoscaling(lambda e, d: levels.get((e, d)), registry=CollectorRegistry(), clock=clock, **kwargs)


def test_no_signal_decides_nothing_then_a_signal_scales():
    clock, levels = Clock(), {}
    autoscaling = loop(levels, clock)
    autoscaling.update([SCALED])
    for _ in range(30):  # no signal for 30 intervals: not even a scale-down
        clock.now += 1
        assert autoscaling.poll() is False
    assert autoscaling.replicas_for(SCALED) == 2
    levels[("iris", "blue")] = Window(2.5)  # 2.5 busy + queued / 0.7 → 4
    clock.now += 1
    assert autoscaling.poll() is True and autoscaling.replicas_for(SCALED) == 4


def test_every_interval_evaluated_is_counted_with_or_without_a_signal():
    clock, levels, registry = Clock(), {}, CollectorRegistry()
    autoscaling = Autoscaling(lambda e, d: levels.get((e, d)), registry=registry, clock=clock)

    def polls() -> float | None:
        return registry.get_sample_value("scoregate_autoscale_polls_total", {"endpoint": "iris", "deployment": "blue"})

    autoscaling.update([SCALED])
    autoscaling.poll()  # not due yet (polling_interval 1 s): not a poll
    assert polls() is None
    clock.now += 1
    autoscaling.poll()  # due, no signal: counted, nothing measured
    assert polls() == 1
    assert registry.get_sample_value("scoregate_autoscale_utilization_ratio",
                                     {"endpoint": "iris", "deployment": "blue"}) is None
    clock.now += 0.5
    autoscaling.poll()
    assert polls() == 1
    levels[("iris", "blue")] = Window(2.5)
    clock.now += 0.5
    assert autoscaling.poll() is True and polls() == 2  # due, a signal, a decision
    clock.now += 1
    assert autoscaling.poll() is False and polls() == 3  # due, a signal, nothing changed


def test_a_deployment_no_longer_autoscaled_leaves_no_series():
    clock, levels, registry = Clock(), {("iris", "blue"): Window(2.5)}, CollectorRegistry()
    autoscaling = Autoscaling(lambda e, d: levels.get((e, d)), registry=registry, clock=clock)
    autoscaling.update([SCALED])
    clock.now += 1
    assert autoscaling.poll() is True  # a decision (up), a poll, both gauges set

    def series() -> set[str]:
        return {sample.name for metric in registry.collect() for sample in metric.samples
                if sample.labels.get("deployment") == "blue"}

    assert {"scoregate_autoscale_polls_total", "scoregate_autoscale_decisions_total",
            "scoregate_autoscale_desired_replicas", "scoregate_autoscale_utilization_ratio"} <= series()
    autoscaling.update([])  # deleted, or no longer target_utilization
    assert series() == set()

def test_an_explicit_instance_count_is_where_it_continues_from():
    clock, levels = Clock(), {("iris", "blue"): Window(2.5)}
    autoscaling = loop(levels, clock)
    autoscaling.update([SCALED])
    clock.now += 1
    autoscaling.poll()
    assert autoscaling.replicas_for(SCALED) == 4
    autoscaling.update([SCALED])  # the same instance_count again: the decision stands
    assert autoscaling.replicas_for(SCALED) == 4
    autoscaling.update([replace(SCALED, instance_count=1)])  # `deployment scale`, an edited CR
    assert autoscaling.replicas_for(SCALED) == 1
    autoscaling.update([replace(SCALED, instance_count=9)])  # clamped to max_instances
    assert autoscaling.replicas_for(SCALED) == 4


def test_a_new_leader_starts_from_what_runs_not_from_instance_count():
    clock = Clock()
    autoscaling = loop({}, clock, initial=lambda d: 3)
    autoscaling.update([SCALED])
    assert autoscaling.replicas_for(SCALED) == 3
    nothing_runs = loop({}, clock, initial=lambda d: None)
    nothing_runs.update([SCALED])
    assert nothing_runs.replicas_for(SCALED) == 2


def settings(**changes) -> Deployment:
    """SCALED with its scale_settings edited (apply of a changed YAML, an edited CR)."""
    return replace(SCALED, scale_settings=replace(SCALED.scale_settings, **changes))


def test_edited_min_and_max_instances_hold_from_the_pass_that_reads_them():
    clock, changes = Clock(), []
    autoscaling = loop({}, clock, on_change=lambda: changes.append(1))  # no signal: no poll decides
    autoscaling.update([SCALED])
    assert autoscaling.replicas_for(SCALED) == 2
    autoscaling.update([settings(min_instances=3)])  # no poll in between
    assert autoscaling.replicas_for(SCALED) == 3 and changes == [1]
    autoscaling.update([settings(max_instances=1)])
    assert autoscaling.replicas_for(SCALED) == 1 and changes == [1, 1]
    autoscaling.update([settings(max_instances=1)])  # inside the bounds already: nothing to announce
    assert autoscaling.replicas_for(SCALED) == 1 and changes == [1, 1]


def test_a_shorter_polling_interval_counts_from_the_edit_not_after_the_old_one():
    clock, levels = Clock(), {("iris", "blue"): Window(2.5)}  # 2.5 busy + queued / 0.7 → 4
    autoscaling = loop(levels, clock)
    autoscaling.update([settings(polling_interval=60)])
    clock.now += 2
    assert autoscaling.poll() is False  # 60 s not over
    autoscaling.update([settings(polling_interval=1)])
    assert autoscaling.poll() is True and autoscaling.replicas_for(SCALED) == 4  # 2 s since the last: due
    levels[("iris", "blue")] = Window(0.1)
    clock.now += 0.5
    assert autoscaling.poll() is False and autoscaling.status("iris", "blue")["low_intervals"] == 0
    clock.now += 0.5  # one new interval on: the next poll (a low one)
    autoscaling.poll()
    assert autoscaling.status("iris", "blue")["low_intervals"] == 1
