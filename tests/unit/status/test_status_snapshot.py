"""build_snapshot over the gateway's real parts (SQLite store and batch service filled by
the same apply code `scoregate apply` uses, a RouterApp's metrics, ejector and
admission, the autoscaler) with a replica list and rollouts set by the test: what the
status page and `scoregate top` get, and what they must never get (keys, env vars)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from router import RouterApp, RouterSettings, RoutingTableHolder
from serving.applying import parse_documents, write
from serving.backends import EXITED, READY, STARTING, ReplicaView
from serving.batch.requests import parse_job_request
from serving.batch.service import BatchService
from serving.controller.autoscaling import Autoscaling
from serving.controller.rollout import Rollout
from serving.manifests import read_documents
from serving.status import LiveSeries, build_snapshot
from serving.store.sqlite import SqliteStore
from tests.support.manifests import write_deployment, write_endpoint
from tests.unit.batch.batch_support import write_batch_endpoint

SECRET = "do-not-show-me"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def parts(tmp_path):
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()
    write_endpoint(yaml_dir, "shop", traffic={"blue": 90, "green": 10}, mirror={"canary": 5})
    write_deployment(yaml_dir, "shop", "blue", instance_count=2, env={"API_TOKEN": SECRET})
    write_deployment(yaml_dir, "shop", "green", scale_settings={
        "type": "target_utilization", "min_instances": 1, "max_instances": 3,
        "target_utilization_percentage": 60, "polling_interval": 1})
    write_deployment(yaml_dir, "shop", "canary")
    batch_root = write_batch_endpoint(tmp_path / "batch", "nightly")
    store = SqliteStore(tmp_path / "store.db")
    batch = BatchService(tmp_path / "state", [])
    applied = parse_documents(read_documents([str(yaml_dir), str(batch_root)]), store, batch)
    write(applied, store, batch)
    job = await batch.submit("nightly", parse_job_request(json.dumps(
        {"input": {"type": "inline", "data": [[i] for i in range(30)]}}).encode()))
    router = RouterApp(RouterSettings(), RoutingTableHolder())
    router.ejector.probe = None
    autoscaling = Autoscaling(router.take_utilization, registry=router.recorder.registry)
    autoscaling.update(store.list_deployments())
    yield SimpleNamespace(store=store, batch=batch, router=router, autoscaling=autoscaling, job=job)
    await router.close()
    await batch.close()
    store.close()


def replicas(store) -> list[ReplicaView]:
    blue = next(d for d in store.list_deployments() if d.name == "blue")
    h = blue.replica_spec_hash()
    return [
        ReplicaView("blue-a", "shop", "blue", h, READY, "127.0.0.1", 5001, 101, 10.0),
        ReplicaView("blue-b", "shop", "blue", h, READY, "127.0.0.1", 5002, 102, 11.0, restarts=2),
        ReplicaView("green-a", "shop", "green", "g1", STARTING, "127.0.0.1", 5003, 103, 12.0, phase="init"),
        ReplicaView("green-b", "shop", "green", "g1", EXITED, "127.0.0.1", 5004, 104, 9.0, exit_code=3,
                    reason="init() raised ValueError: bad model", failed_stage="init"),
    ]


def rollouts(now: float) -> dict:
    blue = Rollout("b1", "create", 1200.0, now - 30)
    for stage in ("environment", "model_download", "code_download", "init", "readiness"):
        blue.enter(stage, now - 20)
    blue.succeed(now - 10)
    green = Rollout("g1", "update", 60.0, now - 5)
    green.enter("environment", now - 5)
    green.fail("init", "init() raised ValueError: bad model", now - 1)
    return {("shop", "blue"): blue, ("shop", "green"): green}


async def snapshot_of(parts, live=None) -> dict:
    import time

    table = rollouts(time.time())
    controller = SimpleNamespace(rollouts=SimpleNamespace(rollout=table.get))
    backend = SimpleNamespace(observe=lambda: replicas(parts.store))
    return await build_snapshot(parts.store, controller, backend, router=parts.router,
                                autoscaling=parts.autoscaling, batch=parts.batch, live=live,
                                scoring_url="https://gw.example:8443")


async def test_snapshot_shows_endpoints_deployments_replicas_rollouts_and_jobs(parts):
    for _ in range(3):
        parts.router.ejector.on_failure("blue-b", "connect")
    snapshot = await snapshot_of(parts)
    json.dumps(snapshot)  # JSON-able as it is

    [endpoint] = snapshot["endpoints"]
    assert endpoint["name"] == "shop" and endpoint["traffic"] == {"blue": 90, "green": 10}
    assert endpoint["mirror_traffic"] == {"canary": 5}
    assert endpoint["scoring_uri"] == "https://gw.example:8443/api/v1/endpoint/shop/score"

    blue, green, canary = snapshot["deployments"]  # by endpoint, then most traffic first
    assert (blue["key"], blue["traffic_percent"], green["traffic_percent"]) == ("shop/blue", 90, 10)
    assert (canary["traffic_percent"], canary["mirror_percent"], canary["replicas_ready"]) == (0, 5, 0)
    assert canary["provisioning_state"] == "Creating" and canary["rollout"] is None
    assert blue["provisioning_state"] == "Succeeded" and green["provisioning_state"] == "Failed"
    assert [s["name"] for s in blue["rollout"]["stages"]] == [
        "environment", "model_download", "code_download", "init", "readiness"]
    assert green["rollout"]["failed_stage"] == "init" and "bad model" in green["rollout"]["reason"]
    counts = (blue["replicas_ready"], blue["replicas_desired"], blue["replicas_ejected"], blue["restarts"])
    assert counts == (2, 2, 1, 2)
    health = {r["replica_id"]: r["health"] for d in (blue, green) for r in d["replicas"]}
    assert health == {"blue-a": "healthy", "blue-b": "ejected", "green-a": "starting", "green-b": "exited"}
    starting = next(r for r in green["replicas"] if r["replica_id"] == "green-a")
    exited = next(r for r in green["replicas"] if r["replica_id"] == "green-b")
    assert starting["phase"] == "init" and exited["reason"].startswith("init() raised")
    assert blue["replicas"][0]["in_flight"] == 0
    assert blue["autoscale"] is None and green["autoscale"]["desired_replicas"] == 1
    assert green["scale"]["target_utilization_percentage"] == 60
    assert snapshot["gateway"]["routing_table_version"] == parts.router.holder.current.version

    assert snapshot["batch"]["endpoints"] == [{"name": "nightly", "deployments": ["main"],
                                               "default_deployment": "main"}]
    [job] = snapshot["batch"]["jobs"]
    assert job["id"] == parts.job.id and job["status"] == "Queued" and job["progress"] == 0
    assert job["elapsed_s"] is None  # not started: the scheduler is not running here
    assert job["items"]["total"] == 30 and job["mini_batches"]["total"] == 3


async def test_snapshot_never_carries_secrets(parts):
    text = json.dumps(await snapshot_of(parts))
    assert SECRET not in text and "API_TOKEN" not in text
    record = parts.store.get_endpoint("shop")
    assert record.primary_key not in text and record.secondary_key not in text
    assert "environment_variables" not in text and "code_configuration" not in text


async def test_live_figures_come_from_the_router_metrics(parts):
    clock = Clock()
    live = LiveSeries(window_s=60, min_interval_s=1, clock=clock)
    recorder = parts.router.recorder
    first = await snapshot_of(parts, live)
    assert first["deployments"][0]["live"]["requests_per_s"] == 0  # one sample: no rate yet
    for _ in range(50):
        recorder.requests.labels("shop", "blue", "200", "").inc()
        recorder.latency.labels("shop", "blue").observe(0.015)
    for _ in range(5):
        recorder.requests.labels("shop", "blue", "504", "ModelTimeout").inc()
        recorder.latency.labels("shop", "blue").observe(5.0)
    clock.now = 5.0
    snapshot = await snapshot_of(parts, live)
    blue = snapshot["deployments"][0]["live"]
    assert blue["requests_per_s"] == pytest.approx(11)
    assert blue["error_ratio"] == pytest.approx(5 / 55, abs=1e-4)
    assert 10 < blue["p50_ms"] < 20 and blue["p99_ms"] > 2000
    assert blue["series"]["t"] == [0.0] and blue["series"]["requests_per_s"] == [11.0]
    assert snapshot["endpoints"][0]["requests_per_s"] == pytest.approx(11)
    assert snapshot["deployments"][1]["live"]["requests_per_s"] == 0
