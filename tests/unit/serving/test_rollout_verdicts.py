"""RolloutManager + planner, pass by pass: a new version that arrives while the previous
one's replicas are all ready is an update of it (surge; the old replicas kept until new
ones are ready), whether or not a pass recorded that verdict and whether or not the store
gives the recorded last good version back yet (a KubernetesStore sees its own status
patch only when the watch delivers it). tests/functional/test_controller_rollout_race.py
does the first case with real model-server processes. And the same verdict from a new
leader's first pass, which knows the rollout in progress only from its saved record
(tests/kubernetes/test_leader_change.py does it on the emulator)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from serving.backends import READY, STARTING, Artifacts, ReplicaView
from serving.controller.planner import StartReplica, StopReplica, plan
from serving.controller.rollout import IN_PROGRESS, SUCCEEDED, Rollout
from serving.controller.rollouts import RolloutManager
from serving.resources import Deployment
from serving.store import DeploymentRecord

KEY = ("ep", "blue")
V1 = Deployment(name="blue", endpoint_name="ep", code="/code", scoring_script="score.py", instance_count=2)
V2 = replace(V1, environment_variables={"LABEL": "two"})
NOW = 1000.0


class Prepared:
    """Every version is prepared at once (the stages before the replicas are not the point)."""

    async def prepare(self, deployment, rollout, clock) -> Artifacts:
        if rollout is not None:
            rollout.enter("environment", clock())
        return Artifacts()


def ready(*ids: str, version: Deployment = V1) -> list[ReplicaView]:
    return [ReplicaView(i, "ep", "blue", version.replica_spec_hash(), READY, "127.0.0.1", 1, 1, 1.0) for i in ids]


async def prepared(changed: asyncio.Event) -> None:
    """Wait for a preparation to finish (RolloutManager calls on_change then)."""
    await asyncio.wait_for(changed.wait(), 5)
    changed.clear()


@pytest.mark.parametrize("window", ["ready after the last pass", "recorded, not yet read back"])
async def test_a_new_version_over_a_ready_first_version_is_an_update(window):
    changed = asyncio.Event()
    manager = RolloutManager(Prepared(), clock=lambda: NOW, on_change=changed.set)
    wanted = (lambda d: d.instance_count)
    first = DeploymentRecord(V1, None, None)
    manager.step([first], [], wanted)
    await prepared(changed)
    start = manager.step([first], [], wanted)  # prepared: both replicas are started
    assert [a.spec_hash for a in plan(start.run, [], NOW, start.hold) if isinstance(a, StartReplica)] == [
        V1.replica_spec_hash()] * 2
    manager.take_changes()
    if window == "recorded, not yet read back":
        manager.step([first], ready("a", "b"), wanted)
        assert manager.rollout(KEY).state == SUCCEEDED
        [(_rollout, good)] = manager.take_changes().values()
        assert good == V1  # saved; the store below has not given it back yet
    else:
        assert manager.rollout(KEY).state == IN_PROGRESS

    # The edit: the store's record still has no last good version.
    step = manager.step([DeploymentRecord(V2, None, None)], ready("a", "b"), wanted)
    assert not [a for a in plan(step.run, ready("a", "b"), NOW, step.hold) if isinstance(a, StopReplica)]
    rollout = manager.rollout(KEY)
    assert (rollout.spec_hash, rollout.kind, rollout.state) == (V2.replica_spec_hash(), "update", IN_PROGRESS)
    assert KEY in step.available
    [(saved, good)] = manager.take_changes().values()
    # saved with the new rollout, unless it was saved already
    assert saved is rollout and good == (None if window == "recorded, not yet read back" else V1)

    # Prepared, the new version surges in: one above the count, the old replicas all kept.
    await prepared(changed)
    step = manager.step([DeploymentRecord(V2, None, None)], ready("a", "b"), wanted)
    actions = plan(step.run, ready("a", "b"), NOW, step.hold)
    assert [(type(a).__name__, a.spec_hash) for a in actions] == [("StartReplica", V2.replica_spec_hash())]
    await manager.close()


class Gated:
    """V1's preparation waits for `release`, then succeeds or fails as told; others are at once."""

    def __init__(self, fail: bool) -> None:
        self.release, self.fail = asyncio.Event(), fail

    async def prepare(self, deployment, rollout, clock) -> Artifacts:
        if deployment == V1:
            await self.release.wait()
            if self.fail:
                from serving.controller.preparing import StageFailed
                raise StageFailed("model_download", "the model cannot be fetched")
        return Artifacts()


@pytest.mark.parametrize("outcome", ["prepared", "failed"])
async def test_a_superseded_version_finishing_its_preparation_changes_nothing(outcome):
    # V1 is still being prepared when V2 replaces it; when V1's preparation ends after
    # that, its old rollout must not be saved over V2's, nor reported as failed.
    changed = asyncio.Event()
    preparer = Gated(fail=outcome == "failed")
    manager = RolloutManager(preparer, clock=lambda: NOW, on_change=changed.set)
    wanted = (lambda d: d.instance_count)
    manager.step([DeploymentRecord(V1, None, None)], [], wanted)
    manager.step([DeploymentRecord(V2, None, None)], [], wanted)
    await prepared(changed)  # V2's preparation
    current = manager.rollout(KEY)
    assert current.spec_hash == V2.replica_spec_hash()
    manager.take_changes()

    preparer.release.set()
    for _ in range(20):  # let V1's preparation end
        await asyncio.sleep(0)
    assert manager.take_changes() == {}
    assert manager.rollout(KEY) is current and current.state == IN_PROGRESS
    await manager.close()


def saved_in_progress(version: Deployment) -> dict:
    """The rollout record another controller saved when it started rolling `version` out."""
    return Rollout(version.replica_spec_hash(), "create", 1200.0, NOW - 60, version=version.to_dict()).to_dict()


async def test_a_new_leader_concludes_the_rollout_it_takes_over_before_an_edit():
    # A new leader's first pass: the saved record says V1's rollout is in progress (its
    # success was never saved), V1's two replicas are ready, and V2 is desired already.
    manager = RolloutManager(Prepared(), clock=lambda: NOW)
    record = DeploymentRecord(V2, None, saved_in_progress(V1))
    step = manager.step([record], ready("a", "b"), lambda d: d.instance_count)
    assert not [a for a in plan(step.run, ready("a", "b"), NOW, step.hold) if isinstance(a, StopReplica)]
    rollout = manager.rollout(KEY)
    assert (rollout.spec_hash, rollout.kind) == (V2.replica_spec_hash(), "update")
    [(saved, good)] = manager.take_changes().values()
    assert saved is rollout and good == V1 and saved.version == V2.to_dict()
    await manager.close()


async def test_a_new_leader_does_not_take_a_version_that_serves_nothing_for_good():
    # The same, but one of V1's replicas is still starting: V1 never served, V2 replaces it.
    manager = RolloutManager(Prepared(), clock=lambda: NOW)
    starting = [replace(ready("b")[0], state=STARTING)]
    step = manager.step([DeploymentRecord(V2, None, saved_in_progress(V1))], ready("a") + starting,
                        lambda d: d.instance_count)
    assert manager.rollout(KEY).kind == "create"
    assert {a.replica_id for a in plan(step.run, ready("a") + starting, NOW, step.hold)
            if isinstance(a, StopReplica)} == {"a", "b"}
    await manager.close()


async def test_a_new_leader_leaves_the_replicas_of_a_version_it_has_not_prepared_alone():
    # No edit: V1's rollout is in progress, its replicas run; this manager has not prepared
    # V1 yet (its first pass), so it must not run V1 at 0 replicas meanwhile.
    manager = RolloutManager(Prepared(), clock=lambda: NOW)
    step = manager.step([DeploymentRecord(V1, None, saved_in_progress(V1))], ready("a", "b"),
                        lambda d: d.instance_count)
    assert KEY in step.hold
    assert plan(step.run, ready("a", "b"), NOW, step.hold) == []
    await manager.close()


def test_a_record_from_a_newer_release_is_read_without_its_unknown_members():
    """A controller rolled back to this release reads records a newer one wrote: members it
    does not know are left out (before: a TypeError on every reconcile pass)."""
    saved = Rollout("abc", "update", 1200.0, 100.0)
    saved.enter("environment", 101.0)
    data = saved.to_dict()
    data["surge_policy"] = "max"
    data["stages"][0]["retries"] = 2
    again = Rollout.from_dict(data)
    assert again == saved and again.stage == "environment" and again.state == IN_PROGRESS


async def test_a_deleted_deployment_takes_its_failed_rollout_series_with_it():
    """scoregate_rollout_failed stays 1 only while the deployment exists: deleting a
    deployment whose rollout failed stops ScoregateRolloutFailed from firing for it."""
    from prometheus_client import CollectorRegistry

    from serving.controller.preparing import StageFailed
    from serving.metrics import ControlPlaneMetrics

    class Failing:
        async def prepare(self, deployment, rollout, clock) -> Artifacts:
            raise StageFailed("model_download", "no such file")

    registry = CollectorRegistry()
    changed = asyncio.Event()
    manager = RolloutManager(Failing(), clock=lambda: NOW, on_change=changed.set,
                             metrics=ControlPlaneMetrics(registry))
    labels = {"endpoint": "ep", "deployment": "blue"}
    manager.step([DeploymentRecord(V1, None, None)], [], lambda d: d.instance_count)
    await prepared(changed)
    assert registry.get_sample_value("scoregate_rollout_failed", labels) == 1
    assert registry.get_sample_value("scoregate_rollouts_total", {**labels, "outcome": "failed"}) == 1

    manager.step([], [], lambda d: d.instance_count)  # the deployment was deleted
    assert registry.get_sample_value("scoregate_rollout_failed", labels) is None
    assert registry.get_sample_value("scoregate_rollouts_total", {**labels, "outcome": "failed"}) is None
