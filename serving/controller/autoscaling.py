"""The autoscaling loop: sample utilization, call the pure policy, apply its verdict.

For every deployment with `scale_settings.type: target_utilization`, every
`polling_interval` seconds: read the router's average (in flight + queued) over the
interval, run serving.controller.autoscaler.decide, and when the replica count changes,
tell the controller (which scales through the backend). Every decision that changes
something is logged with the inputs that led to it and counted in a metric.
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
UtilizationSource = Callable[[str, str], object]  # → router.admission.UtilizationWindow


@dataclass
class _Tracked:
    replicas: int
    state: AutoscaleState
    next_due: float
    last_utilization: float = 0.0


class Autoscaling:
    def __init__(self, source: UtilizationSource, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 0.1,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._source = source
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

    # -- desired state --------------------------------------------------------------------
    def update(self, deployments: list[Deployment]) -> None:
        """Track autoscaled deployments; called by the controller after each read."""
        wanted = {(d.endpoint_name, d.name): d for d in deployments
                  if d.scale_settings.type == "target_utilization"}
        for key in [k for k in self._tracked if k not in wanted]:
            del self._tracked[key]
            for gauge in (self.desired, self.utilization):
                try:
                    gauge.remove(*key)
                except KeyError:
                    pass
        for key, deployment in wanted.items():
            s = deployment.scale_settings
            if key not in self._tracked:
                start = max(s.min_instances, min(s.max_instances, deployment.instance_count))
                self._tracked[key] = _Tracked(start, AutoscaleState(), self._clock() + s.polling_interval)
                self.desired.labels(*key).set(start)
        self._deployments = wanted

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
            if deployment is None or now < tracked.next_due:
                continue
            s = deployment.scale_settings
            tracked.next_due = now + s.polling_interval
            window = self._source(*key)
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
        if changed:
            self._on_change()
        return changed
