"""KubernetesBackend against the API emulator over HTTP, with the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio

import pytest

from serving.backends import EXITED, READY, STARTING, STOPPING
from serving.backends.kubernetes import KubernetesBackend, StaticPlacement
from serving.backends.kubernetes.translation import InstanceTypeSpec
from serving.controller.planner import ForgetReplica, StartReplica, StopReplica, plan
from serving.resources import Deployment
from tests.kubernetes import cluster as fates
from tests.kubernetes.conftest import eventually

NS = "team-a"
SMALL = InstanceTypeSpec("small", {"pool": "cpu"}, {"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"})


def blue(**changes) -> Deployment:
    values = dict(name="blue", endpoint_name="iris", code="https://models.example/iris-code.tar.gz",
                  scoring_script="score.py", model_path="https://models.example/iris-model.tar.gz",
                  instance_type="small", instance_count=2)
    values.update(changes)
    return Deployment(**values)


@pytest.fixture
async def backend(kube_api, cluster):
    made = []

    async def make(**kwargs) -> KubernetesBackend:
        backend = KubernetesBackend(kube_api, namespaces=(NS,), placement=StaticPlacement(NS, {"small": SMALL}),
                                    **kwargs)
        await backend.start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


async def converge(backend: KubernetesBackend, desired: list[Deployment], until, timeout_s: float = 5.0):
    """Run the real planner against the backend until `until(views)` holds (a tiny reconcile loop)."""
    async def step():
        for action in plan(desired, backend.observe(), asyncio.get_running_loop().time() + 1e6):
            if isinstance(action, StartReplica):
                await backend.start_replica(action.deployment, action.spec_hash, action.crash_streak)
            elif isinstance(action, StopReplica):
                await backend.stop_replica(action.replica_id)
            elif isinstance(action, ForgetReplica):
                backend.forget(action.replica_id)
        return until(backend.observe())

    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await step():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"did not converge: {backend.observe()}")
        await asyncio.sleep(0.02)


def states(views) -> list[str]:
    return sorted(v.state for v in views)


async def test_start_replicas_creates_one_deployment_per_version_and_a_service(apiserver, backend, cluster):
    b = await backend()
    d = blue()
    await converge(b, [d], lambda views: states(views) == [READY, READY])

    [deployment] = apiserver.objects_of("deployments", NS)
    assert deployment["metadata"]["name"] == f"iris-blue-{d.replica_spec_hash()[:8]}"
    assert deployment["spec"]["replicas"] == 2
    [service] = apiserver.objects_of("services", NS)
    assert service["metadata"]["name"] == "iris-blue"
    assert service["spec"]["selector"] == {"scoregate.io/endpoint": "iris", "scoregate.io/deployment": "blue"}
    views = b.observe()
    assert {v.host for v in views} == {p["status"]["podIP"] for p in cluster.pods()}
    assert {v.port for v in views} == {5001}
    assert all(v.replica_id.startswith(f"{NS}/iris-blue-") for v in views)


async def test_scaling_down_removes_the_pod_the_controller_chose(apiserver, backend, cluster):
    b = await backend()
    await converge(b, [blue(instance_count=3)], lambda views: states(views) == [READY] * 3)
    chosen = sorted(v.replica_id for v in b.observe())[1]  # neither the newest nor the oldest
    await b.stop_replica(chosen)

    assert chosen in {v.replica_id for v in b.observe() if v.state == STOPPING}
    await eventually(lambda: len(cluster.pods()) == 2)
    remaining = {f"{NS}/{p['metadata']['name']}" for p in cluster.pods()}
    assert chosen not in remaining
    assert apiserver.objects_of("deployments", NS)[0]["spec"]["replicas"] == 2
    await eventually(lambda: states(b.observe()) == [READY, READY])  # once the watch brought the deletion


async def test_scaling_up_and_to_zero_then_removing_everything(apiserver, backend, cluster):
    b = await backend()
    await converge(b, [blue(instance_count=1)], lambda views: states(views) == [READY])
    await converge(b, [blue(instance_count=4)], lambda views: states(views) == [READY] * 4)
    assert apiserver.objects_of("deployments", NS)[0]["spec"]["replicas"] == 4
    await converge(b, [], lambda views: views == [])
    await eventually(lambda: not apiserver.objects_of("deployments", NS) and not apiserver.objects_of("services", NS))


async def test_update_runs_two_versions_side_by_side_then_retires_the_old(apiserver, backend, cluster):
    b = await backend()
    old, new = blue(), blue(environment_variables={"MODEL_FLAVOUR": "v2"})
    await converge(b, [old], lambda views: states(views) == [READY, READY])
    cluster.fate = fates.pending_forever
    await converge(b, [new], lambda views: len({v.spec_hash for v in views}) == 2)
    assert sum(1 for v in b.observe() if v.spec_hash == old.replica_spec_hash() and v.state == READY) == 2
    cluster.fate = fates.running_ready
    for pod in cluster.pods():  # the downloads finish: the new pods become ready
        if pod["metadata"]["labels"]["scoregate.io/spec-hash"] == new.replica_spec_hash():
            apiserver.update(("", "v1", "pods"), NS, pod["metadata"]["name"],
                             lambda p: p.__setitem__("status", fates.running_ready(p)))
    await converge(b, [new], lambda views: {(v.spec_hash, v.state) for v in views} == {(new.replica_spec_hash(), READY)})
    await eventually(lambda: [d["metadata"]["name"] for d in apiserver.objects_of("deployments", NS)]
                     == [f"iris-blue-{new.replica_spec_hash()[:8]}"])
    assert len(apiserver.objects_of("services", NS)) == 1


FAILURES = [
    ("image pull", fates.image_pull_failure("ErrImagePull"), "image pull: cannot pull image", "ErrImagePull"),
    ("image pull back-off", fates.image_pull_failure(), "image pull: cannot pull image", "ImagePullBackOff"),
    ("crash loop", fates.crash_loop(1, "ValueError: bad model"), "running: the model server exited with code 1",
     "ValueError: bad model"),
    ("init() failed", fates.crash_loop(3, "init() raised KeyError"), "init: init() or the import", "KeyError"),
    ("config error", fates.config_error(), "environment: CreateContainerConfigError", 'secret "model-credentials"'),
    ("model download", fates.download_failure(), "model download: downloading the model and code failed",
     "sha256 mismatch"),
    ("out of memory", fates.oom_killed(), "running: out of memory (OOMKilled)", "1Gi of memory that instance type 'small'"),
    ("unschedulable", fates.unschedulable(), "scheduling: no node has the resources or labels that instance type 'small'",
     "Insufficient memory"),
]


@pytest.mark.parametrize("fate, stage_and_reason, detail", [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
async def test_each_pod_failure_gives_its_stage_and_reason(backend, cluster, fate, stage_and_reason, detail):
    cluster.fate = fate
    b = await backend()
    d = blue(instance_count=1)
    await b.start_replica(d, d.replica_spec_hash())
    [view] = await eventually(lambda: [v for v in b.observe() if v.state == EXITED])
    if "running" in stage_and_reason:  # never seen ready: the stage is init, not running
        stage_and_reason = stage_and_reason.replace("running:", "init:")
    assert view.reason.startswith(stage_and_reason), view.reason
    assert detail in view.reason
    assert view.ended_at is not None


async def test_replica_failure_of_the_deployment_fails_the_placeholder(backend, cluster):
    cluster.replica_failure = 'pods "iris-blue-x" is forbidden: violates PodSecurity "baseline:latest"'
    b = await backend()
    d = blue(instance_count=1)
    await b.start_replica(d, d.replica_spec_hash())
    [view] = await eventually(lambda: [v for v in b.observe() if v.state == EXITED])
    assert view.reason.startswith("scheduling: the pod cannot be created: pods")
    assert "#pending-" in view.replica_id


async def test_a_forgotten_failed_replica_is_replaced_by_a_fresh_pod(backend, cluster):
    cluster.fate = fates.crash_loop(1, "boom")
    b = await backend()
    d = blue(instance_count=1)
    await b.start_replica(d, d.replica_spec_hash())
    [failed] = await eventually(lambda: [v for v in b.observe() if v.state == EXITED])
    cluster.fate = fates.running_ready
    b.forget(failed.replica_id)
    assert failed.replica_id not in {v.replica_id for v in b.observe()}
    await b.start_replica(d, d.replica_spec_hash(), crash_streak=failed.restarts + 1)
    [ready] = await eventually(lambda: [v for v in b.observe() if v.state == READY])
    assert ready.replica_id != failed.replica_id
    await eventually(lambda: len(cluster.pods()) == 1)
    assert ready.restarts >= failed.restarts + 1


async def test_a_restarted_backend_adopts_everything_and_changes_nothing(apiserver, backend, cluster):
    first = await backend()
    d = blue(instance_count=3)
    await converge(first, [d], lambda views: states(views) == [READY] * 3)
    await first.close()
    before = ({o["metadata"]["uid"] for o in apiserver.objects_of("deployments", NS)},
              {o["metadata"]["uid"] for o in apiserver.objects_of("services", NS)}, cluster.pods_created)
    writes = len([r for r in apiserver if r.method.value in ("POST", "PUT", "PATCH", "DELETE")])

    second = await backend()
    assert states(second.observe()) == [READY] * 3
    assert plan([d], second.observe(), 0.0) == []
    # its writer's first pass syncs every adopted version (start() marks them all dirty):
    # that is where a restart would write, so wait for it rather than for a while
    await eventually(lambda: second._writer.passes >= 1, what="the restarted writer's first pass")
    after = ({o["metadata"]["uid"] for o in apiserver.objects_of("deployments", NS)},
             {o["metadata"]["uid"] for o in apiserver.objects_of("services", NS)}, cluster.pods_created)
    assert after == before
    assert len([r for r in apiserver if r.method.value in ("POST", "PUT", "PATCH", "DELETE")]) == writes


async def test_conflicting_writes_are_reread_and_retried(apiserver, backend, cluster):
    b = await backend()
    d = blue(instance_count=1)
    await converge(b, [d], lambda views: states(views) == [READY])
    conflict = apiserver.fail_next("PUT", "deployments", 409, times=2)
    await converge(b, [blue(instance_count=3)], lambda views: states(views) == [READY] * 3)
    assert conflict.hits == 2
    assert apiserver.objects_of("deployments", NS)[0]["spec"]["replicas"] == 3


async def test_api_errors_back_off_and_the_write_is_retried(apiserver, backend, cluster):
    b = await backend()
    d = blue(instance_count=1)
    outage = apiserver.fail_next("POST", "deployments", 503, times=2)
    await b.start_replica(d, d.replica_spec_hash())
    [waiting] = b.observe()
    assert waiting.state == STARTING and "waiting for the Kubernetes API: HTTP 503" in waiting.reason
    await eventually(lambda: states(b.observe()) == [READY])
    assert outage.hits == 2
    assert len(apiserver.objects_of("deployments", NS)) == 1


async def test_410_gone_relists_and_misses_nothing(apiserver, backend, cluster, caplog):
    caplog.set_level("INFO", logger="scoregate.kubernetes.watch")
    b = await backend(watch_timeout_s=1)
    d = blue(instance_count=1)
    await converge(b, [d], lambda views: states(views) == [READY])
    relists = b._pods.relists
    [pod] = cluster.pods()
    # a change whose event is compacted away before the watch delivers it; the watch breaks,
    # its resumption gets 410 Gone, and only a re-list can show the change
    apiserver.update(("", "v1", "pods"), NS, pod["metadata"]["name"],
                     lambda p: p.__setitem__("status", fates.crash_loop(1, "after the gap")(p)))
    apiserver.compact()
    await apiserver.drop_watches()
    [view] = await eventually(lambda: [v for v in b.observe() if v.state == EXITED])
    assert "after the gap" in view.reason
    assert b._pods.relists > relists
    assert "watch of pods in team-a: resourceVersion too old, re-listing" in caplog.text
