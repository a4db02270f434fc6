"""A replica's `restarts` counts every time its slot was started again, as a pod's
restartCount does, and agrees with `scoregate_replica_restarts_total`: the shared
controller over the local backend, with a real model-server child process killed with
SIGKILL, read through `deployment show`'s view, the status snapshot and the metric.

The back-off streak is another count: it starts again at 0 after a healthy run. So the
kills come after a healthy run (made short here) — where `restarts` once read 0 for
ever — and after quick runs, where both counts grow.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest
from prometheus_client import CollectorRegistry

from router import RoutingTableHolder
from serving.applying import parse_documents, write
from serving.backends import READY
from serving.backends.local import LocalProcessBackend
from serving.controller import planner
from serving.controller.loop import Controller
from serving.controller.preparing import Preparer
from serving.controller.publisher import RoutingPublisher
from serving.controller.rollouts import RolloutManager
from serving.manifests import read_documents
from serving.metrics import ControlPlaneMetrics
from serving.status.snapshot import build_snapshot
from serving.store.sqlite import SqliteStore
from serving.views import deployment_view
from tests.support.manifests import write_deployment, write_endpoint
from tests.support.waiting import until

KEY = ("counts", "blue")


@pytest.fixture
async def gateway(tmp_path):
    """Store, local backend, rollouts, metrics and a running Controller with one replica
    of KEY applied; yields what the test reads."""
    store = SqliteStore(tmp_path / "store.db")
    registry = CollectorRegistry()
    ref: list[Controller] = []
    backend = LocalProcessBackend(tmp_path / "state", on_change=lambda: ref and ref[0].on_replica_change())
    rollouts = RolloutManager(Preparer(tmp_path / "models", store.list_instance_types),
                              on_change=lambda: ref and ref[0].notify())
    controller = Controller(store, backend, RoutingPublisher(RoutingTableHolder()), rollouts,
                            metrics=ControlPlaneMetrics(registry), interval_s=0.2)
    ref.append(controller)
    await backend.start()
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()
    write_endpoint(yaml_dir, KEY[0], traffic={KEY[1]: 100})
    write_deployment(yaml_dir, *KEY)
    write(parse_documents(read_documents([str(yaml_dir)]), store), store)
    await controller.start()
    try:
        yield store, backend, controller, registry
    finally:
        await controller.close()
        await backend.close()
        store.close()


def ready_replica(backend, other_than: int | None = None):
    return next((v for v in backend.observe() if (v.endpoint, v.deployment) == KEY and v.state == READY
                 and v.pid != other_than), None)


async def kill_and_await_replacement(backend, healthy_run_s: float):
    """SIGKILL the ready replica once it has run `healthy_run_s`; its ready replacement."""
    replica = await until(lambda: ready_replica(backend), 30, "a ready replica")
    await asyncio.sleep(max(0.0, replica.started_at + healthy_run_s - time.time()))
    os.kill(replica.pid, signal.SIGKILL)
    return await until(lambda: ready_replica(backend, other_than=replica.pid), 30, "a replacement replica")


@pytest.mark.parametrize("healthy", [True, False], ids=["after healthy runs", "after quick runs"])
async def test_restarts_of_a_killed_replica_agree_with_the_metric(gateway, monkeypatch, caplog, healthy):
    store, backend, controller, registry = gateway
    # A run this long counts as healthy (the back-off streak starts again); 10 s in production.
    monkeypatch.setattr(planner, "HEALTHY_RUN_S", 0.5 if healthy else 600.0)
    caplog.set_level(logging.INFO, logger="scoregate.controller")
    for kills in (1, 2):
        new = await kill_and_await_replacement(backend, 0.6 if healthy else 0.0)
        assert (new.restarts, new.crash_streak) == (kills, 0 if healthy else kills)

        view = deployment_view(store.get_deployment(*KEY), backend.observe())
        assert [r["restarts"] for r in view["replicas"]] == [kills]
        [status] = (await build_snapshot(store, controller, backend))["deployments"]
        assert status["restarts"] == kills
        assert [r["restarts"] for r in status["replicas"]] == [kills]
        metric = registry.get_sample_value("scoregate_replica_restarts_total",
                                           {"endpoint": KEY[0], "deployment": KEY[1]})
        assert metric == kills
        assert f"starting replica {new.replica_id} of counts/blue (restarts: {kills}, " in caplog.text
