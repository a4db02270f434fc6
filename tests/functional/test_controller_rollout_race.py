"""An edit that lands between "the first version's replicas are ready" and "a reconcile
pass has recorded that rollout as succeeded" — the shared controller (serving/controller)
over the local backend, with real model-server child processes and the SQLite store.

The window is made by driving the Controller pass by pass: after the pass that starts
the first version's replicas, no pass runs until both are ready, so the controller has
not seen them ready when the edit is applied. On a cluster the same window is open
whenever the controller's loop is busy or slow: the status reporter already says
Succeeded from the ready pods, and the routers already send traffic to them.

Expected whatever the timing: the edit is an *update* of a version that serves — the new
version surges in, and the old one stops only as new replicas are ready (or is kept, when
the new version fails).
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from router import RoutingTableHolder
from serving.applying import parse_documents, write
from serving.backends import READY, STARTING
from serving.backends.local import LocalProcessBackend
from serving.controller.loop import Controller
from serving.controller.preparing import Preparer
from serving.controller.publisher import RoutingPublisher
from serving.controller.rollout import FAILED, IN_PROGRESS, SUCCEEDED
from serving.controller.rollouts import RolloutManager
from serving.manifests import read_documents
from serving.store.sqlite import SqliteStore
from tests.support.manifests import write_deployment, write_endpoint

KEY = ("race", "main")


async def until(condition, timeout_s: float, what: str, step=None):
    """Poll `condition` (after `step()`, when given) until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if step is not None:
            await step()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def parts(tmp_path):
    """Store, local backend, rollouts and a Controller that is *not* started: the test
    runs its passes. `ready_seen` gets the number of READY replicas of the deployment
    (any version) at every replica change the backend reports."""
    store = SqliteStore(tmp_path / "store.db")
    ready_seen: list[int] = []
    ref: list[Controller] = []

    def on_replica_change() -> None:
        ready_seen.append(sum(1 for v in backend.observe() if (v.endpoint, v.deployment) == KEY and v.state == READY))
        if ref:
            ref[0].on_replica_change()

    backend = LocalProcessBackend(tmp_path / "state", on_change=on_replica_change)
    rollouts = RolloutManager(Preparer(tmp_path / "models", store.list_instance_types),
                              on_change=lambda: ref and ref[0].notify())
    controller = Controller(store, backend, RoutingPublisher(RoutingTableHolder()), rollouts, interval_s=0.2)
    ref.append(controller)
    await backend.start()
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()

    def apply(**env) -> str:
        write_endpoint(yaml_dir, KEY[0], traffic={KEY[1]: 100})
        write_deployment(yaml_dir, KEY[0], KEY[1], instance_count=2, env=env)
        write(parse_documents(read_documents([str(yaml_dir)]), store), store)
        return store.get_deployment(*KEY).replica_spec_hash()

    def replicas(spec_hash: str, *states: str) -> list[str]:
        return sorted(v.replica_id for v in backend.observe()
                      if (v.endpoint, v.deployment) == KEY and v.spec_hash == spec_hash and v.state in states)

    try:
        yield SimpleNamespace(store=store, backend=backend, rollouts=rollouts, controller=controller,
                              ready_seen=ready_seen, apply=apply, replicas=replicas)
    finally:
        await controller.close()
        await backend.close()
        store.close()


async def first_version_ready_unrecorded(parts) -> tuple[str, list[str]]:
    """Apply the first version and stop running passes once its two replicas are started;
    return when both are ready. No pass has seen them ready: its rollout is in progress."""
    first = parts.apply(LABEL="first")
    await until(lambda: len(parts.replicas(first, STARTING, READY)) == 2, 20, "the first version's two replicas "
                "to be started", step=parts.controller.reconcile_once)
    ready = await until(lambda: (r := parts.replicas(first, READY)) and len(r) == 2 and r, 30,
                        "the first version's replicas to be ready")
    rollout = parts.rollouts.rollout(KEY)
    assert (rollout.spec_hash, rollout.kind, rollout.state) == (first, "create", IN_PROGRESS)
    [record] = parts.store.list_deployment_records()
    assert record.last_good is None
    return first, ready


async def test_an_edit_before_the_first_rollout_is_recorded_is_an_update_with_surge(parts):
    first, ready = await first_version_ready_unrecorded(parts)
    parts.ready_seen.clear()

    second = parts.apply(LABEL="second")
    await parts.controller.start()  # the pass that sees the edit, then the loop
    await until(lambda: parts.rollouts.rollout(KEY).state == SUCCEEDED and len(parts.replicas(second, READY)) == 2
                and not parts.replicas(first, STARTING, READY), 30, "the second version to replace the first")

    assert min(parts.ready_seen) >= 2, (
        f"the old version stopped serving before the new one was ready: ready replicas {parts.ready_seen}")
    rollout = parts.rollouts.rollout(KEY)
    assert (rollout.spec_hash, rollout.kind) == (second, "update")
    [record] = parts.store.list_deployment_records()
    assert record.last_good.replica_spec_hash() == second
    assert (record.rollout["spec_hash"], record.rollout["kind"]) == (second, "update")


async def test_a_failing_edit_in_that_window_rolls_back_to_the_first_version(parts):
    first, ready = await first_version_ready_unrecorded(parts)
    parts.ready_seen.clear()

    second = parts.apply(LABEL="second", INIT_FAIL="1")
    await parts.controller.start()
    rollout = await until(lambda: (r := parts.rollouts.rollout(KEY)).state == FAILED and r, 30,
                          "the second version's rollout to fail")
    await until(lambda: not parts.replicas(second, STARTING, READY), 10, "the failed version's replicas to go")
    assert parts.replicas(first, STARTING, READY) == ready, "the first version was stopped"  # same two processes
    assert parts.ready_seen and min(parts.ready_seen) >= 2, f"ready replicas {parts.ready_seen}"
    assert (rollout.spec_hash, rollout.kind, rollout.failed_stage, rollout.rolled_back) == (
        second, "update", "init", True)
    [record] = parts.store.list_deployment_records()
    assert record.last_good.replica_spec_hash() == first
