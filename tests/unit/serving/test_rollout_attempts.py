"""A new attempt of a failed version, as Azure ML makes one at every PUT: the user's apply
of the same YAML asks for it (DeploymentRecord.attempt changes), and only then is the
version rolled out again — with a new budget, every stage from the start and the exited
replicas of the failed attempt forgotten. The reconcile loop alone never retries it, and
an apply of a version that succeeded or is rolling out changes nothing. The store keeps
the attempt asked for, so a restart in between still makes it.
tests/e2e/test_rollouts.py does it with a real gateway and model download."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from serving.backends import EXITED, READY, Artifacts, ReplicaView
from serving.controller.preparing import StageFailed
from serving.controller.rollout import FAILED, IN_PROGRESS, SUCCEEDED
from serving.controller.rollouts import RolloutManager
from serving.resources import Deployment, Endpoint
from serving.store import DeploymentRecord
from serving.store.sqlite import SqliteStore

KEY = ("ep", "blue")
V1 = Deployment(name="blue", endpoint_name="ep", code="/code", scoring_script="score.py", instance_count=1)
HASH = V1.replica_spec_hash()
NOW = 1000.0


def wanted(deployment: Deployment) -> int:
    return deployment.instance_count


class Download:
    """The model download fails until `available` (a server that was down, outside the YAML)."""

    def __init__(self) -> None:
        self.available, self.calls = False, 0

    async def prepare(self, deployment, rollout, clock) -> Artifacts:
        self.calls += 1
        rollout.enter("environment", clock())
        rollout.enter("model_download", clock())
        if not self.available:
            raise StageFailed("model_download", "GET http://models/m.json answered 503")
        return Artifacts()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def settle(changed: asyncio.Event) -> None:
    await asyncio.wait_for(changed.wait(), 5)
    changed.clear()


async def failed_manager():
    """A manager whose rollout of V1 failed in model_download, and the record saved of it."""
    changed, clock, download = asyncio.Event(), Clock(), Download()
    manager = RolloutManager(download, clock=clock, on_change=changed.set)
    manager.step([DeploymentRecord(V1, None, None)], [], wanted)
    await settle(changed)
    assert manager.rollout(KEY).state == FAILED
    [(saved, _good)] = manager.take_changes().values()
    return manager, download, changed, clock, saved.to_dict()


async def test_the_reconcile_loop_alone_never_retries_a_failed_version():
    manager, download, changed, clock, saved = await failed_manager()
    download.available = True  # the cause is gone, but nobody applied anything
    failed = manager.rollout(KEY)
    for _ in range(5):
        clock.now += 60
        step = manager.step([DeploymentRecord(V1, None, saved)], [], wanted)
        await asyncio.sleep(0)
        assert manager.rollout(KEY) is failed and failed.state == FAILED
        assert step.run == [replace(V1, instance_count=0)] and KEY in step.failed
    assert download.calls == 1
    await manager.close()


async def test_an_apply_of_the_failed_version_is_a_new_attempt_from_the_first_stage():
    manager, download, changed, clock, saved = await failed_manager()
    download.available = True
    clock.now += 60
    step = manager.step([DeploymentRecord(V1, None, saved, attempt="1")], [], wanted)
    retry = manager.rollout(KEY)
    assert (retry.spec_hash, retry.state, retry.attempt, retry.started_at) == (HASH, IN_PROGRESS, "1", clock.now)
    assert KEY not in step.failed
    [(queued, _good)] = manager.take_changes().values()
    assert queued is retry  # saved: after a restart it is this attempt that is in progress
    await settle(changed)
    assert download.calls == 2  # the download is what had failed: it is done again
    assert [(s.name, s.outcome) for s in retry.stages] == [
        ("environment", SUCCEEDED), ("model_download", SUCCEEDED), ("init", None)]
    ready = [ReplicaView("r1", "ep", "blue", HASH, READY, "127.0.0.1", 1, 1, clock.now)]
    manager.step([DeploymentRecord(V1, None, saved, attempt="1")], ready, wanted)
    assert retry.state == SUCCEEDED
    await manager.close()


async def test_a_new_attempt_after_init_failed_prepares_again_and_ignores_the_old_exits():
    changed, clock, download = asyncio.Event(), Clock(), Download()
    download.available = True
    manager = RolloutManager(download, clock=clock, on_change=changed.set)
    manager.step([DeploymentRecord(V1, None, None)], [], wanted)
    await settle(changed)
    exited = [ReplicaView("r1", "ep", "blue", HASH, EXITED, "127.0.0.1", 1, 1, NOW, restarts=2,
                          reason="init() raised OSError: port 9000 taken", failed_stage="init", ended_at=NOW)]
    manager.step([DeploymentRecord(V1, None, None)], exited, wanted)
    assert manager.rollout(KEY).state == FAILED
    saved = manager.rollout(KEY).to_dict()

    clock.now += 60  # the port was freed; the exited replica is still on record
    step = manager.step([DeploymentRecord(V1, None, saved, attempt="1")], exited, wanted)
    retry = manager.rollout(KEY)
    assert retry.state == IN_PROGRESS and step.fresh == {KEY}  # the loop forgets the old exits
    assert step.run == [replace(V1, instance_count=0)]  # nothing runs before it is prepared again
    await settle(changed)
    assert download.calls == 2 and retry.stages[0].name == "environment"
    step = manager.step([DeploymentRecord(V1, None, saved, attempt="1")], [], wanted)
    assert retry.state == IN_PROGRESS and step.run == [V1] and not step.fresh
    await manager.close()


async def test_an_apply_of_a_succeeded_version_changes_nothing():
    changed = asyncio.Event()
    download = Download()
    download.available = True
    manager = RolloutManager(download, clock=lambda: NOW, on_change=changed.set)
    manager.step([DeploymentRecord(V1, None, None)], [], wanted)
    await settle(changed)
    ready = [ReplicaView("r1", "ep", "blue", HASH, READY, "127.0.0.1", 1, 1, NOW)]
    manager.step([DeploymentRecord(V1, None, None)], ready, wanted)
    done = manager.rollout(KEY)
    assert done.state == SUCCEEDED
    step = manager.step([DeploymentRecord(V1, V1, done.to_dict(), attempt="1")], ready, wanted)
    assert manager.rollout(KEY) is done and done.state == SUCCEEDED and not step.fresh
    assert step.run == [V1] and download.calls == 1
    await manager.close()


async def test_an_apply_during_a_rollout_neither_restarts_it_nor_retries_it_later():
    class Slow:
        release = asyncio.Event()

        async def prepare(self, deployment, rollout, clock) -> Artifacts:
            await self.release.wait()
            raise StageFailed("model_download", "timed out")

    changed = asyncio.Event()
    manager = RolloutManager(Slow(), clock=lambda: NOW, on_change=changed.set)
    manager.step([DeploymentRecord(V1, None, None)], [], wanted)
    running = manager.rollout(KEY)
    manager.step([DeploymentRecord(V1, None, None, attempt="1")], [], wanted)
    assert manager.rollout(KEY) is running and running.attempt == "1"  # taken on, not restarted
    Slow.release.set()
    await settle(changed)
    manager.step([DeploymentRecord(V1, None, None, attempt="1")], [], wanted)
    assert manager.rollout(KEY) is running and running.state == FAILED  # that apply is spent
    await manager.close()


async def test_a_retry_asked_before_a_restart_happens_after_it_and_only_once():
    _manager, _download, _changed, _clock, saved = await failed_manager()
    await _manager.close()
    # The restarted controller: the store says Failed (attempt "") and that "1" was asked.
    download = Download()
    download.available = True
    changed = asyncio.Event()
    manager = RolloutManager(download, clock=lambda: NOW + 60, on_change=changed.set)
    manager.step([DeploymentRecord(V1, None, saved, attempt="1")], [], wanted)
    retry = manager.rollout(KEY)
    assert (retry.state, retry.attempt) == (IN_PROGRESS, "1")
    await settle(changed)
    await manager.close()
    # The retry failed too and was saved; another restart keeps that verdict.
    retry.fail("init", "init() raised", NOW + 61)
    again = RolloutManager(download, clock=lambda: NOW + 120)
    again.step([DeploymentRecord(V1, None, retry.to_dict(), attempt="1")], [], wanted)
    assert again.rollout(KEY).state == FAILED and again.take_changes() == {}
    await again.close()


def test_the_store_keeps_the_attempt_asked_for_across_a_reopen(tmp_path):
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    store.apply([Endpoint(name="ep", traffic={})], [V1])
    assert store.list_deployment_records()[0].attempt == ""
    store.apply([], [V1], retry={KEY})
    store.apply([], [V1])  # an apply that asks for no retry leaves the counter alone
    store.close()
    reopened = SqliteStore(path)
    [record] = reopened.list_deployment_records()
    assert record.attempt == "1" and record.deployment.name == "blue"
    reopened.close()
