"""The reconcile loop: read desired state, observe the backend, plan, act, publish.

Runs one pass at a time, woken by notify() (an apply, a delete, a replica that became
ready or exited, a rollout stage that finished) or every `interval_s` otherwise. Each
pass: serving.controller.rollouts turns desired versions into what should run (and
drives their rollouts), the autoscaler sets replica counts, the planner
(serving.controller.planner) decides, this module executes and publishes
(serving.controller.publisher). Stops run as tracked background tasks so a replica slow
to exit never holds up the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from ..backends import EXITED, Backend
from ..resources import Deployment
from ..store import DeploymentRecord, EndpointRecord, Store
from .autoscaling import Autoscaling
from .planner import ForgetReplica, StartReplica, StopReplica, plan
from .publisher import RoutingPublisher
from .rollouts import RolloutManager
from ..tasks import cancel_and_wait

log = logging.getLogger("scoregate.controller")


class Controller:
    def __init__(self, store: Store, backend: Backend, publisher: RoutingPublisher,
                 rollouts: RolloutManager, *, autoscaling: Autoscaling | None = None, metrics=None,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._backend = backend
        self._publisher = publisher
        self.rollouts = rollouts
        self._autoscaling = autoscaling
        self._metrics = metrics  # serving.metrics.ControlPlaneMetrics
        self._interval_s = interval_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping: dict[str, asyncio.Task] = {}
        self._records: list[EndpointRecord] = []
        self._deployments: list[Deployment] = []
        self._available: set[tuple[str, str]] = set()
        self._failed: dict[tuple[str, str], str] = {}  # deployments whose only version failed: why
        # Objects being deleted (their replicas still stopping): (endpoint, deployment or
        # None for the whole endpoint) -> since. Shown as provisioning_state Deleting.
        self.deleting: dict[tuple[str, str | None], float] = {}
        self.passes = 0  # completed reconcile passes, start()'s first one included
        self._acted_on: dict[tuple[str, str], int] = {}  # instance_count per deployment, last pass

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self.reconcile_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="controller")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self.rollouts.close()
        if self._stopping:
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)

    def notify(self) -> None:
        self._wake.set()

    def wanted(self, deployment: Deployment) -> int:
        """The replica count this controller runs `deployment` at: the autoscaler's for an
        autoscaled deployment, else `instance_count`. The rollouts judge a version against it,
        and on a cluster so does the status (serving/backends/kubernetes/status.py)."""
        if self._autoscaling is not None:
            return self._autoscaling.replicas_for(deployment)
        return deployment.instance_count

    def acted_on_instance_count(self, deployment: Deployment) -> int | None:
        """The instance_count of `deployment` the last completed pass acted on (None before
        one did). On a cluster the status keeps it, so that a new leader can tell an
        instanceCount edit no leader has acted on (an explicit scale for its autoscaler)
        from the one the replica count that runs was derived from."""
        return self._acted_on.get((deployment.endpoint_name, deployment.name))

    def on_replica_change(self) -> None:
        """Backend callback: republish at once (no await), then let the loop re-plan."""
        self._publish()
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile_once()
            except Exception:  # keep reconciling; the next pass may succeed
                log.exception("reconcile pass failed")
                await asyncio.sleep(self._interval_s)

    async def reconcile_once(self) -> None:
        self._records = await asyncio.to_thread(self._store.list_endpoints)
        records: list[DeploymentRecord] = await asyncio.to_thread(self._store.list_deployment_records)
        self._deployments = [r.deployment for r in records]
        if self._autoscaling is not None:
            self._autoscaling.update(self._deployments)
        step = self.rollouts.step(records, self._backend.observe(), self.wanted)
        self._available, self._failed = step.available, step.failed
        await self._save_rollouts()
        self._forget_exited(step.fresh)
        actions = plan(step.run, self._backend.observe(), self._clock(), step.hold)
        for action in actions:
            if isinstance(action, ForgetReplica):
                self._backend.forget(action.replica_id)
            elif isinstance(action, StopReplica):
                self._stop_in_background(action)
            elif isinstance(action, StartReplica):
                d = action.deployment
                artifacts = self.rollouts.artifacts_for((d.endpoint_name, d.name), action.spec_hash)
                replica_id = await self._backend.start_replica(d, action.spec_hash, action.crash_streak, artifacts,
                                                               restarts=action.restarts)
                if action.replaces_exited and self._metrics is not None:
                    self._metrics.replica_restarts.labels(d.endpoint_name, d.name).inc()
                log.info("starting replica %s of %s/%s (restarts: %d, crash streak: %d)", replica_id,
                         d.endpoint_name, d.name, action.restarts, action.crash_streak)
        self._publish()
        self._acted_on = {(d.endpoint_name, d.name): d.instance_count for d in self._deployments}
        self.passes += 1

    async def _save_rollouts(self) -> None:
        """Write the rollouts' changes to the store. One it refuses (an API error on a
        cluster) is written again with the next pass's changes: dropped, a verdict would
        leave the store saying "in progress" with no last good version for good — what a
        new leader and the routers read."""
        for key, (rollout, last_good) in self.rollouts.take_changes().items():
            try:
                await asyncio.to_thread(self._store.save_rollout, key[0], key[1], rollout.to_dict(), last_good)
            except Exception as exc:
                log.warning("saving the rollout of %s/%s failed; trying again next pass: %s", key[0], key[1], exc)
                self.rollouts.keep_unsaved(key, rollout, last_good)

    def _forget_exited(self, keys: set[tuple[str, str]]) -> None:
        """A new attempt of a failed version starts with no exited replicas of the last one."""
        for replica in self._backend.observe():
            if (replica.endpoint, replica.deployment) in keys and replica.state == EXITED:
                self._backend.forget(replica.replica_id)

    def _stop_in_background(self, action: StopReplica) -> None:
        if action.replica_id in self._stopping:
            return
        log.info("stopping replica %s: %s", action.replica_id, action.reason)
        task = asyncio.get_running_loop().create_task(self._backend.stop_replica(action.replica_id))
        self._stopping[action.replica_id] = task
        task.add_done_callback(lambda _t, rid=action.replica_id: self._stopping.pop(rid, None))

    def _publish(self) -> None:
        self._publisher.publish(self._records, self._deployments, self._backend.observe(), self._available,
                                self._failed)
