"""An object made invalid by an edit stays served in its last valid version by controllers
and routers that start while it is invalid (a restart, a leader change, a new router pod):
the controller records that version in the object's status (`status.lastValid`).

The controller is run_controller on FakeCluster; the router a KubernetesRouter reading
what that controller wrote, in front of a real model server that one EndpointSlice stands
for (FakeCluster's pods do not listen)."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from serving.backends.kubernetes import names
from serving.backends.kubernetes.api import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS
from serving.backends.kubernetes.router_running import KubernetesRouter
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import IRIS, ModelReplica, put_replica, router_settings
from tests.kubernetes.test_controller import (NS, after_passes, controller, serving_sample,  # noqa: F401
                                              status_of)

SAMPLE = (IRIS / "sample-request.json").read_text()
BAD_TYPE = "OnlineDeployment team-a/iris-blue: spec.instanceType: no InstanceType named cpu-smal"
BAD_TRAFFIC = "OnlineEndpoint team-a/iris: spec.traffic: weights must add up to 100 (or all be 0), got 60"
BAD_SCALE = {"type": "target_utilization", "minInstances": 3, "maxInstances": 2}
BAD_SCALE_REASON = "OnlineDeployment team-a/iris-blue: spec.scaleSettings"


@pytest.fixture
async def replica():
    started = await ModelReplica().start()
    yield started
    await started.stop()


@pytest.fixture
async def routers(kubeconfig, tmp_path):
    started: list[KubernetesRouter] = []

    async def start() -> KubernetesRouter:
        router = KubernetesRouter(router_settings(kubeconfig, f"router-{len(started)}", tmp_path,
                                                  coordination=False))
        started.append(router)
        await router.start()  # returns once it routes what its first read of the API shows
        return router

    yield start
    for router in started:
        await router.close()


async def score(router: KubernetesRouter, key: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        async with session.post(f"https://127.0.0.1:{router.port}/api/v1/endpoint/iris/score", data=SAMPLE,
                                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}) as r:
            return r.status, await r.read()


def primary_key(apiserver) -> str:
    [secret] = [s for s in apiserver.objects_of("secrets", NS)
                if s["metadata"]["name"] == names.keys_secret_name("iris")]
    return base64.b64decode(secret["data"]["primaryKey"]).decode()


def workload(apiserver, cluster) -> tuple:
    """What serves iris-blue: its Deployments (uid, replicas), Services and pods."""
    return ([(d["metadata"]["uid"], d["spec"]["replicas"]) for d in apiserver.objects_of("deployments", NS)],
            [s["metadata"]["uid"] for s in apiserver.objects_of("services", NS)],
            sorted(p["metadata"]["uid"] for p in cluster.pods()))


async def stopped(running) -> None:
    running.stop.set()
    await asyncio.wait_for(running.task, 10)


async def test_a_controller_and_a_router_started_while_invalid_keep_it_serving(apiserver, kube_api, cluster,
                                                                              controller, routers, replica):
    first = await serving_sample(apiserver, kube_api, controller)
    serving_hash = status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"]
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replica.port)
    before = workload(apiserver, cluster)
    assert len(before[0]) == 1 and len(before[2]) == 2
    await stopped(first)  # the leader goes away; the edits land before the next one starts

    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal"}})
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 60}}})
    second = controller()
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("reason") == BAD_TYPE and s, timeout_s=10)
    assert status["provisioningState"] == "Failed" and status["stage"] == "validation"
    ep_status = await eventually(lambda: (s := status_of(apiserver, "onlineendpoints", "iris"))
                                 .get("reason") == BAD_TRAFFIC and s, timeout_s=10)
    assert ep_status["provisioningState"] == "Failed"
    await after_passes(second.registry, 3)
    assert workload(apiserver, cluster) == before  # nothing stopped, nothing replaced
    status = status_of(apiserver, "onlinedeployments", "iris-blue")
    assert (status["specHash"], status["readyReplicas"]) == (serving_hash, 2)

    # a router pod that starts now routes the last valid versions: the endpoint and its traffic
    router = await routers()
    assert dict(router.router.holder.current.endpoints["iris"].traffic) == {"blue": 100}
    code, body = await score(router, primary_key(apiserver))
    assert code == 200 and json.loads(body)["predictions"], body

    # valid edits again: the endpoint takes them, the deployment rolls a new version as usual
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 100}}})
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-small",
                                                                         "environmentVariables": {"LOG_LEVEL": "debug"}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Succeeded" and s["specHash"] != serving_hash and s,
                              timeout_s=10)
    assert status["readyReplicas"] == 2 and status["reason"] == ""
    [rolled] = await eventually(lambda: len(d := apiserver.objects_of("deployments", NS)) == 1 and d, timeout_s=10)
    assert rolled["metadata"]["name"] == f"iris-blue-{status['specHash'][:8]}"
    assert [{"name": "LOG_LEVEL", "value": "debug"}] == [e for e in rolled["spec"]["template"]["spec"]["containers"][0]
                                                          ["env"] if e["name"] == "LOG_LEVEL"]
    await eventually(lambda: len(cluster.pods()) == 2 and not set(before[2]) & {p["metadata"]["uid"]
                                                                                  for p in cluster.pods()},
                     timeout_s=10)
    assert status_of(apiserver, "onlineendpoints", "iris")["provisioningState"] == "Succeeded"
    assert (await score(router, primary_key(apiserver)))[0] == 200


async def test_the_version_kept_across_a_restart_is_exactly_the_last_valid_one(apiserver, kube_api, cluster,
                                                                                controller):
    """The last valid version took a setting away; a controller started while a later edit is
    refused runs that version as it is, so it adopts its Deployment instead of rolling one."""
    first = await serving_sample(apiserver, kube_api, controller)
    first_hash = status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"]
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": None}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Succeeded" and s["specHash"] != first_hash and s,
                              timeout_s=10)
    [serving] = await eventually(lambda: len(d := apiserver.objects_of("deployments", NS)) == 1 and d, timeout_s=10)
    before = await eventually(lambda: len((w := workload(apiserver, cluster))[2]) == 2 and w, timeout_s=10)
    await stopped(first)

    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal"}})
    second = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("reason") == BAD_TYPE,
                     timeout_s=10)
    await after_passes(second.registry, 3)
    assert workload(apiserver, cluster) == before
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"] == status["specHash"]
    assert not any(e["name"] == "LOG_LEVEL" for e in serving["spec"]["template"]["spec"]["containers"][0]["env"])


async def test_a_recreated_object_does_not_inherit_the_old_version(apiserver, kube_api, cluster, controller,
                                                                   routers, replica):
    """An edit both the controller and the routers refuse (the router does not know
    InstanceTypes), so a version either serves can only come from the old object."""
    first = await serving_sample(apiserver, kube_api, controller)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"scaleSettings": BAD_SCALE}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("reason", "")
                     .startswith(BAD_SCALE_REASON), timeout_s=10)
    [old] = apiserver.objects_of("onlinedeployments", NS)
    await stopped(first)

    # deleted (its Deployment, Service and pods go with it) and created again, as invalid
    await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue")
    await eventually(lambda: workload(apiserver, cluster) == ([], [], []), timeout_s=10)
    new = await kube_api.create(ONLINE_DEPLOYMENTS, NS, {"apiVersion": old["apiVersion"], "kind": old["kind"],
                                                         "metadata": {"name": "iris-blue", "namespace": NS},
                                                         "spec": old["spec"]})
    assert new["metadata"]["uid"] != old["metadata"]["uid"] and "status" not in new
    # a status write the old leader made late (by name) lands on the new object
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"status": old["status"]}, subresource="status")
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replica.port)  # were blue routed, this would answer

    router = await routers()  # a router that starts now: the endpoint, without blue
    assert "blue" not in router.router.holder.current.endpoints["iris"].deployments
    code, body = await score(router, primary_key(apiserver))
    assert code == 503 and json.loads(body)["message"].endswith("blue not rolled out"), body
    second = controller()
    await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue")).get("reason", "")
                     .startswith(BAD_SCALE_REASON) and s.get("readyReplicas") == 0 and "lastValid" not in s,
                     timeout_s=10)
    await after_passes(second.registry, 3)
    assert workload(apiserver, cluster) == ([], [], [])
