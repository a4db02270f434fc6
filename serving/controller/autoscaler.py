"""Autoscaling policy: a pure function of an immutable context.

    utilization = (requests in flight + requests queued) / (replicas × slots per replica)

averaged over one polling interval (slots = max_concurrent_requests_per_instance; with
one slot per replica this is DESIGN's "(replicas busy + requests queued) / replicas").
- Above the target: scale up at once to the replica count that brings utilization back
  under the target: ceil(level / (slots × target)).
- Below the target: scale down only after the count needed has stayed below the current
  one for `scale_down_intervals` consecutive intervals (about 20), and then only to the
  highest count needed during that stretch, so a load that comes and goes is not cut.
- Always within min_instances..max_instances.
The loop around it (serving.controller.autoscaling) owns time, I/O and the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AutoscaleState:
    low_intervals: int = 0
    peak_needed: int = 0


@dataclass(frozen=True)
class AutoscaleContext:
    current_replicas: int
    min_replicas: int
    max_replicas: int
    target_utilization: float  # 0..1, e.g. 0.7
    average_level: float  # requests in flight + queued, averaged over the interval
    slots_per_replica: int
    state: AutoscaleState = AutoscaleState()
    scale_down_intervals: int = 20

    @property
    def utilization(self) -> float:
        capacity = self.current_replicas * self.slots_per_replica
        return self.average_level / capacity if capacity else (math.inf if self.average_level else 0.0)


@dataclass(frozen=True)
class AutoscaleDecision:
    replicas: int
    state: AutoscaleState
    reason: str

    def changed(self, ctx: AutoscaleContext) -> bool:
        return self.replicas != ctx.current_replicas


def replicas_needed(ctx: AutoscaleContext) -> int:
    per_replica = ctx.slots_per_replica * ctx.target_utilization
    # A small tolerance keeps float noise at exactly the target from adding a replica.
    return max(0, math.ceil(ctx.average_level / per_replica - 1e-9)) if per_replica > 0 else ctx.max_replicas


def decide(ctx: AutoscaleContext) -> AutoscaleDecision:
    lo, hi = ctx.min_replicas, max(ctx.min_replicas, ctx.max_replicas)
    current = ctx.current_replicas
    needed = replicas_needed(ctx)
    clamp = lambda n: max(lo, min(hi, n))  # noqa: E731
    if current < lo or current > hi:
        return AutoscaleDecision(clamp(current), AutoscaleState(), f"replicas {current} outside {lo}..{hi}")
    if needed > current:
        target = clamp(needed)
        reason = (f"utilization {ctx.utilization:.0%} above target {ctx.target_utilization:.0%}: "
                  f"{needed} replicas needed")
        return AutoscaleDecision(target, AutoscaleState(), reason)
    if needed < current and current > lo:
        low = ctx.state.low_intervals + 1
        peak = max(ctx.state.peak_needed, needed)
        if low >= ctx.scale_down_intervals:
            target = clamp(peak)
            reason = (f"utilization below target {ctx.target_utilization:.0%} for {low} intervals: "
                      f"{peak} replicas needed at most")
            return AutoscaleDecision(target, AutoscaleState(), reason)
        return AutoscaleDecision(current, AutoscaleState(low, peak),
                                 f"below target for {low}/{ctx.scale_down_intervals} intervals")
    return AutoscaleDecision(current, AutoscaleState(), "at target")
