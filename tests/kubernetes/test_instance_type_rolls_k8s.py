"""Editing an InstanceType rolls the deployments that use it: a new version (a new apps/v1
Deployment with the new resources and nodeSelector) surges in while the old one keeps
serving, and an edit the cluster cannot schedule is rolled back to the old version."""

from __future__ import annotations

import asyncio

from serving.backends.kubernetes.api import INSTANCE_TYPES
from tests.kubernetes import cluster as fates
from tests.kubernetes.conftest import eventually
from tests.kubernetes.test_controller import (NS, after_passes, controller, kubectl_apply, sample,  # noqa: F401
                                              status_of)

BIGGER = {"spec": {"nodeSelector": {"scoregate.io/pool": "cpu-v2"},
                   "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}}}


def ready_pods(cluster, deployment: dict) -> int:
    uid = deployment["metadata"]["uid"]
    return sum(1 for p in cluster.pods() if any(r["uid"] == uid for r in p["metadata"].get("ownerReferences") or [])
               and any(c["type"] == "Ready" and c["status"] == "True"
                       for c in (p.get("status") or {}).get("conditions") or []))


async def settled(apiserver) -> dict:
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    [deployment] = apiserver.objects_of("deployments", NS)
    return deployment


async def test_an_edited_instance_type_rolls_out_a_new_version(apiserver, kube_api, cluster, controller):
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    running = controller()
    old = await settled(apiserver)
    old_hash = status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"]

    lowest = []  # ready pods of all versions, sampled throughout the rollout

    async def watch_ready() -> None:
        while True:
            lowest.append(sum(ready_pods(cluster, d) for d in apiserver.objects_of("deployments", NS)))
            await asyncio.sleep(0.005)
    watcher = asyncio.get_running_loop().create_task(watch_ready())
    try:
        await kube_api.patch(INSTANCE_TYPES, None, "cpu-small", BIGGER)
        await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                         .get("specHash") not in (None, old_hash) and s.get("provisioningState") == "Succeeded"
                         and [d["metadata"]["name"] for d in apiserver.objects_of("deployments", NS)]
                         != [old["metadata"]["name"]] and len(apiserver.objects_of("deployments", NS)) == 1,
                         timeout_s=15)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

    [new] = apiserver.objects_of("deployments", NS)
    new_hash = status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"]
    assert new["metadata"]["name"] == f"iris-blue-{new_hash[:8]}" != old["metadata"]["name"]
    pod = new["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"scoregate.io/pool": "cpu-v2"}
    assert pod["containers"][0]["resources"] == BIGGER["spec"]["resources"]
    assert new["spec"]["replicas"] == 2 and ready_pods(cluster, new) == 2
    assert min(lowest) >= 2, "the old version stopped serving before the new one was ready"

    # An edit of another instance type changes nothing for this deployment.
    await kube_api.patch(INSTANCE_TYPES, None, "gpu-t4", {"spec": {"nodeSelector": {"scoregate.io/pool": "gpu-2"}}})
    await after_passes(running.registry, 3)  # two of them began after the edit was acknowledged
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [new["metadata"]["uid"]]


async def test_an_instance_type_edit_that_cannot_be_scheduled_is_rolled_back(apiserver, kube_api, cluster,
                                                                            controller):
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    controller()
    old = await settled(apiserver)
    old_pods = {p["metadata"]["uid"] for p in cluster.pods()}

    def fate(pod: dict) -> dict:  # no node carries the new label
        if (pod["spec"].get("nodeSelector") or {}).get("scoregate.io/pool") == "cpu-v2":
            return fates.unschedulable("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.")(pod)
        return fates.running_ready(pod)
    cluster.fate = fate
    await kube_api.patch(INSTANCE_TYPES, None, "cpu-small", BIGGER)
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("reason", "").endswith("rolled back to the previous version") and s, timeout_s=15)
    assert status["provisioningState"] == "Failed"
    assert "instance type 'cpu-small'" in status["reason"] and "node affinity/selector" in status["reason"]
    # The old version, with its old resources, serves on; the failed one goes away.
    await eventually(lambda: [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)]
                     == [old["metadata"]["uid"]], timeout_s=10)
    [kept] = apiserver.objects_of("deployments", NS)
    assert kept["spec"]["template"] == old["spec"]["template"] and kept["spec"]["replicas"] == 2
    assert {p["metadata"]["uid"] for p in cluster.pods()} == old_pods

    # Undoing the edit is the old version again: it is Succeeded, nothing new is created.
    await kube_api.patch(INSTANCE_TYPES, None, "cpu-small", {"spec": {
        "nodeSelector": {"scoregate.io/pool": "cpu"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [old["metadata"]["uid"]]
