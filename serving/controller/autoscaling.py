"""The autoscaling loop: sample utilization, call the pure policy, apply its verdict.

For every deployment with `scale_settings.type: target_utilization`, every
`polling_interval` seconds: read the average (in flight + queued) over the interval —
the embedded router's own, or on a cluster the sum over all routers
(serving/backends/kubernetes/utilization.py) — run serving.controller.autoscaler.decide,
and when the replica count changes, tell the controller (which scales through the
backend). Every decision that changes something is logged with the inputs that led to it
and counted in a metric; every interval evaluated, with a signal or without, is counted
in `scoregate_autoscale_polls_total`. A source may answer None: no signal this interval
(nothing is decided, so a missing signal never scales anything). An explicit scale (a new
`instance_count`, e.g. `deployment scale` or an edited custom resource) sets the count
the autoscaler continues from; `initial` lets a restarted controller continue from the
replicas that run instead of starting over from `instance_count`. An edit of
`scale_settings` holds from the pass that reads it: a count outside new
min/max_instances is brought inside them at once, and the next poll is due one new
`polling_interval` after the last one (at once if that has already passed), not when the
old interval runs out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..resources import Deployment
from .autoscaler import AutoscaleContext, AutoscaleState, decide
from ..tasks import cancel_and_wait

log = logging.getLogger("scoregate.autoscaler")

Key = tuple[str, str]
# → an object with `average_level` and `window_s` (router.admission.UtilizationWindow, or
# the ClusterSample of serving.backends.kubernetes.utilization.ClusterUtilization.sample),
# or None: no signal.
UtilizationSource = Callable[[str, str], object]


@dataclass
class _Tracked:
    replicas: int
    state: AutoscaleState
    last_poll: float  # when the current interval started; the next poll is due one interval on
    instance_count: int  # as last applied: a change is an explicit scale
    last_utilization: float = 0.0


class Autoscaling:
    def __init__(self, source: UtilizationSource, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 0.1,
                 on_change: Callable[[], None] = lambda: None,
                 initial: Callable[[Deployment], int | None] = lambda _d: None) -> None:
        self._source = source
        self._initial = initial
        self._clock = clock
        self._tick_s = tick_s
        self._on_change = on_change
        self._tracked: dict[Key, _Tracked] = {}
        self._deployments: dict[Key, Deployment] = {}
        self._task: asyncio.Task | None = None
        self.decisions = Counter("scoregate_autoscale_decisions",
                                 "Autoscaler decisions that changed the replica count.",
                                 ("endpoint", "deployment", "direction"), registry=registry)
        self.desired = Gauge("scoregate_autoscale_desired_replicas",
                             "Replica count the autoscaler wants.", ("endpoint", "deployment"),
                             registry=registry)
        self.utilization = Gauge("scoregate_autoscale_utilization_ratio",
                                 "Average utilization over the last polling interval.",
                                 ("endpoint", "deployment"), registry=registry)
        # Rises once per polling interval while the loop runs, also when there is no signal
        # (no utilization sample then, no decision): a stuck loop or source stops it.
        self.polls = Counter("scoregate_autoscale_polls",
                             "Polling intervals the autoscaler evaluated, with or without a signal.",
                             ("endpoint", "deployment"), registry=registry)

    # -- desired state --------------------------------------------------------------------
    def update(self, deployments: list[Deployment]) -> None:
        """Track autoscaled deployments; called by the controller after each read."""
        wanted = {(d.endpoint_name, d.name): d for d in deployments
                  if d.scale_settings.type == "target_utilization"}
        bounds_moved = False
        for key in [k for k in self._tracked if k not in wanted]:
            del self._tracked[key]
            # Its series go with it (a deleted deployment is not shown forever).
            for metric, labels in ((self.desired, key), (self.utilization, key), (self.polls, key),
                                   (self.decisions, (*key, "up")), (self.decisions, (*key, "down"))):
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass
        for key, deployment in wanted.items():
            s = deployment.scale_settings
            clamp = lambda n, s=s: max(s.min_instances, min(max(s.min_instances, s.max_instances), n))  # noqa: E731
            tracked = self._tracked.get(key)
            if tracked is None:
                running = self._initial(deployment)
                start = clamp(running if running else deployment.instance_count)
                self._tracked[key] = _Tracked(start, AutoscaleState(), self._clock(), deployment.instance_count)
                self.desired.labels(*key).set(start)
            elif tracked.instance_count != deployment.instance_count:
                tracked.instance_count = deployment.instance_count
                tracked.replicas, tracked.state = clamp(deployment.instance_count), AutoscaleState()
                log.info("autoscale %s/%s: scaled explicitly to %d replicas; continuing from there",
                         key[0], key[1], tracked.replicas)
                self.desired.labels(*key).set(tracked.replicas)
            elif clamp(tracked.replicas) != tracked.replicas:
                # min/max_instances edited: they hold from this pass, not from the next poll.
                bounded = clamp(tracked.replicas)
                direction = "up" if bounded > tracked.replicas else "down"
                log.info("autoscale %s/%s %s: %d -> %d replicas (min/max_instances now %d..%d)", key[0], key[1],
                         direction, tracked.replicas, bounded, s.min_instances, s.max_instances)
                tracked.replicas, tracked.state = bounded, AutoscaleState()
                self.decisions.labels(key[0], key[1], direction).inc()
                self.desired.labels(*key).set(tracked.replicas)
                bounds_moved = True
        self._deployments = wanted
        if bounds_moved:
            self._on_change()  # the caller plans with replicas_for already; others (status) follow

    def replicas_for(self, deployment: Deployment) -> int:
        """The replica count to run: the autoscaler's when it manages the deployment."""
        tracked = self._tracked.get((deployment.endpoint_name, deployment.name))
        return tracked.replicas if tracked else deployment.instance_count

    def status(self, endpoint: str, deployment: str) -> dict | None:
        tracked = self._tracked.get((endpoint, deployment))
        if tracked is None:
            return None
        return {"desired_replicas": tracked.replicas, "utilization": round(tracked.last_utilization, 4),
                "low_intervals": tracked.state.low_intervals}

    # -- the loop ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="autoscaling")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                self.poll()
            except Exception:
                log.exception("autoscaling poll failed")

    def poll(self) -> bool:
        """Evaluate every deployment that is due; True if any replica count changed."""
        now = self._clock()
        changed = False
        for key, tracked in self._tracked.items():
            deployment = self._deployments.get(key)
            if deployment is None:
                continue
            s = deployment.scale_settings
            # Due against the interval in force now: an edited polling_interval counts at once.
            if now < tracked.last_poll + s.polling_interval:
                continue
            tracked.last_poll = now
            window = self._source(*key)
            if window is None:
                self.polls.labels(*key).inc()
                continue  # no signal: decide nothing (see the module docstring)
            ctx = AutoscaleContext(
                current_replicas=tracked.replicas, min_replicas=s.min_instances,
                max_replicas=s.max_instances, target_utilization=s.target_utilization_percentage / 100,
                average_level=window.average_level,
                slots_per_replica=deployment.request_settings.max_concurrent_requests_per_instance,
                state=tracked.state)
            decision = decide(ctx)
            tracked.last_utilization = ctx.utilization if ctx.current_replicas else 0.0
            self.utilization.labels(*key).set(tracked.last_utilization)
            tracked.state = decision.state
            if decision.changed(ctx):
                direction = "up" if decision.replicas > ctx.current_replicas else "down"
                log.info("autoscale %s/%s %s: %d -> %d replicas (%s; average in flight+queued %.2f, "
                         "slots/replica %d, window %.2fs)", key[0], key[1], direction,
                         ctx.current_replicas, decision.replicas, decision.reason, window.average_level,
                         ctx.slots_per_replica, window.window_s)
                tracked.replicas = decision.replicas
                self.decisions.labels(key[0], key[1], direction).inc()
                self.desired.labels(*key).set(decision.replicas)
                changed = True
            self.polls.labels(*key).inc()
        if changed:
            self._on_change()
        return changed
