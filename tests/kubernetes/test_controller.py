"""The whole controller (run_controller: store + backend + reconcile loop + status) against the
API emulator: custom resources in, Deployments, Services, Secrets and statuses out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.backends.kubernetes import names
from serving.backends.kubernetes.api import INSTANCE_TYPES, ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, SERVICES
from serving.backends.kubernetes.running import KubernetesControllerSettings, run_controller
from tests.kubernetes import cluster as fates
from tests.kubernetes.conftest import eventually

NS = "team-a"
SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
KINDS = {"InstanceType": INSTANCE_TYPES, "OnlineEndpoint": ONLINE_ENDPOINTS, "OnlineDeployment": ONLINE_DEPLOYMENTS}


def sample(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]


async def kubectl_apply(kube_api, docs: list[dict]) -> None:
    for doc in docs:
        kind = KINDS[doc["kind"]]
        await kube_api.create(kind, doc["metadata"].get("namespace"), doc)


class Running(NamedTuple):
    stop: asyncio.Event
    task: asyncio.Task
    registry: CollectorRegistry  # the controller's metrics, its reconcile pass count among them


@pytest.fixture
async def controller(kubeconfig):
    running: list[Running] = []

    def start(**overrides) -> Running:
        stop, registry = asyncio.Event(), CollectorRegistry()
        settings = KubernetesControllerSettings(**{"kubeconfig": kubeconfig, "namespaces": (NS,), "interval_s": 0.2,
                                                   "leader_election": False, **overrides})
        task = asyncio.get_running_loop().create_task(run_controller(settings, stop, registry=registry))
        running.append(Running(stop, task, registry))
        return running[-1]

    yield start
    for stop, task, _ in running:
        stop.set()
        await asyncio.wait_for(task, 10)


def passes(registry: CollectorRegistry) -> int:
    """Reconcile passes the controller has completed (0 until it has started)."""
    return int(registry.get_sample_value("scoregate_controller_reconcile_passes_total") or 0)


async def after_passes(registry: CollectorRegistry, n: int, timeout_s: float = 10.0) -> None:
    """Wait until the controller has completed `n` more reconcile passes than it had at the
    call. The first may have begun before the call; the other n - 1 began after it, so they
    read the controller's caches as they were then or later. A test that asserts "nothing
    changed" waits on this instead of sleeping: a sleep passes even when no pass ran."""
    since = passes(registry)
    await eventually(lambda: passes(registry) >= since + n, timeout_s=timeout_s,
                     what=f"{n} reconcile passes after pass {since}", context=lambda: f"passes: {passes(registry)}")


def the(apiserver, plural: str) -> dict:
    [obj] = apiserver.objects_of(plural, NS)
    return obj


def status_of(apiserver, plural: str, name: str) -> dict:
    obj = next((o for o in apiserver.objects_of(plural, NS) if o["metadata"]["name"] == name), None)
    return (obj or {}).get("status") or {}


async def test_sample_resources_become_deployment_service_and_keys(apiserver, kube_api, cluster, controller):
    await serving_sample(apiserver, kube_api, controller)

    cr = the(apiserver, "onlinedeployments")
    assert cr["status"]["readyReplicas"] == 2 and cr["status"]["stage"] == "" and cr["status"]["reason"] == ""
    assert cr["status"]["desiredReplicas"] == 2  # autoscaled 1..4, no load reported: instanceCount
    deployment = the(apiserver, "deployments")
    meta, spec = deployment["metadata"], deployment["spec"]
    assert meta["name"] == f"iris-blue-{cr['status']['specHash'][:8]}"
    assert meta["ownerReferences"] == [{"apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment",
                                        "name": "iris-blue", "uid": cr["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "scoregate-model", "app.kubernetes.io/instance": "iris-blue",
        "app.kubernetes.io/component": "model-replica", "app.kubernetes.io/managed-by": "scoregate",
        "scoregate.io/endpoint": "iris", "scoregate.io/deployment": "blue",
        "scoregate.io/spec-hash": cr["status"]["specHash"]}
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"scoregate.io/pool": "cpu"}
    [server] = pod["containers"]
    assert server["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert server["readinessProbe"] == {"httpGet": {"path": "/", "port": "http"}, "initialDelaySeconds": 5,
                                        "periodSeconds": 5, "timeoutSeconds": 2, "successThreshold": 1,
                                        "failureThreshold": 3}
    assert server["livenessProbe"]["failureThreshold"] == 30 and server["livenessProbe"]["successThreshold"] == 1
    assert {"name": "LOG_LEVEL", "value": "info"} in server["env"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    [fetch] = pod["initContainers"]
    assert "https://models.example.com/iris/blue/model.tar.gz" in fetch["command"]
    for container in (server, fetch):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True

    service = the(apiserver, "services")
    assert service["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]
    assert service["spec"]["selector"] == {"scoregate.io/endpoint": "iris", "scoregate.io/deployment": "blue"}
    [secret] = apiserver.objects_of("secrets", NS, names.MANAGED_KEYS_SELECTOR)  # (and scoregate-secrets)
    endpoint = the(apiserver, "onlineendpoints")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == endpoint["metadata"]["uid"]
    assert set(secret["data"]) == {"primaryKey", "secondaryKey"}
    await eventually(lambda: status_of(apiserver, "onlineendpoints", "iris").get("keysSecretName")
                     == secret["metadata"]["name"])


async def test_scaling_the_custom_resource_scales_the_deployment(apiserver, kube_api, cluster, controller):
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    controller()
    await eventually(lambda: len(cluster.pods()) == 2 and status_of(apiserver, "onlinedeployments", "iris-blue")
                     .get("readyReplicas") == 2, timeout_s=10)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceCount": 4}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("readyReplicas") == 4,
                     timeout_s=10)
    assert the(apiserver, "deployments")["spec"]["replicas"] == 4
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceCount": 1}})
    await eventually(lambda: len(cluster.pods()) == 1, timeout_s=10)
    assert the(apiserver, "deployments")["spec"]["replicas"] == 1


async def test_controller_restart_converges_without_duplicating(apiserver, kube_api, cluster, controller):
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    first = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    first.stop.set()
    await asyncio.wait_for(first.task, 10)
    uids = {p: {o["metadata"]["uid"] for o in apiserver.objects_of(p, NS)} for p in ("deployments", "services", "secrets")}
    pods_created = cluster.pods_created
    writes = sum(1 for r in apiserver if r.method.value in ("POST", "PUT", "DELETE") or
                 (r.method.value == "PATCH" and r.subresource != "status"))

    second = controller()
    await after_passes(second.registry, 3)  # its first pass (in start) and two of its loop
    assert {p: {o["metadata"]["uid"] for o in apiserver.objects_of(p, NS)} for p in uids} == uids
    assert cluster.pods_created == pods_created
    assert sum(1 for r in apiserver if r.method.value in ("POST", "PUT", "DELETE") or
               (r.method.value == "PATCH" and r.subresource != "status")) == writes
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"] == "Succeeded"


async def test_a_failing_rollout_shows_its_stage_and_reason(apiserver, kube_api, cluster, controller):
    cluster.fate = fates.image_pull_failure()
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    controller()
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s.get("rollout", {}).get("state") == "Failed"
                              and s, timeout_s=10)
    assert status["stage"] == "environment"  # the rollout's stage: on a cluster, the image pull is in it
    assert status["reason"].startswith("image pull: cannot pull image ghcr.io/scoregate/scoregate")
    assert "ImagePullBackOff" in status["reason"]
    assert status["rollout"]["state"] == "Failed" and status["rollout"]["failed_stage"] == "environment"


async def test_a_retry_annotation_rolls_a_failed_version_out_again(apiserver, kube_api, cluster, controller):
    """An unchanged `kubectl apply` is a no-op at the API server: a new value of the
    scoregate.io/retry annotation is how a user asks for a new attempt of a failed version
    once its cause is gone. The controller alone never makes one."""
    cluster.fate = fates.image_pull_failure()
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    running = controller()
    failed = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("rollout", {}).get("state") == "Failed" and s, timeout_s=10)
    cluster.fate = fates.running_ready  # the image was pushed meanwhile
    await after_passes(running.registry, 3)
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["rollout"] == failed["rollout"]

    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue",
                         {"metadata": {"annotations": {"scoregate.io/retry": "1"}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Succeeded" and s, timeout_s=15)
    assert status["rollout"]["attempt"] == "1" and status["rollout"]["spec_hash"] == failed["rollout"]["spec_hash"]
    assert status["readyReplicas"] == 2
    await after_passes(running.registry, 3)  # the annotation, unchanged, asks for nothing more
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["rollout"] == status["rollout"]


async def test_invalid_resources_are_reported_not_served(apiserver, kube_api, cluster, controller):
    endpoint, deployment = sample("iris-endpoint.yaml")
    endpoint["spec"]["traffic"] = {"blue": 60}  # the schema allows it, the controller does not
    deployment["spec"]["instanceType"] = "no-such-type"
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + [endpoint, deployment])
    controller()
    ep_status = await eventually(lambda: (s := status_of(apiserver, "onlineendpoints", "iris"))
                                 .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert ep_status["reason"] == "OnlineEndpoint team-a/iris: spec.traffic: weights must add up to 100 (or all be 0), got 60"
    dep_status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                                  .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert dep_status["stage"] == "validation"
    assert dep_status["reason"] == ("OnlineDeployment team-a/iris-blue: spec.endpointName: the OnlineEndpoint iris"
                                    " in namespace team-a is not valid (see its status)")
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 100}}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue")["reason"]
                     == "OnlineDeployment team-a/iris-blue: spec.instanceType: no InstanceType named no-such-type")
    assert status_of(apiserver, "onlineendpoints", "iris")["provisioningState"] == "Succeeded"
    assert apiserver.objects_of("deployments", NS) == []


async def test_schema_admission_refuses_a_wrong_type_before_the_controller_sees_it(kube_api):
    [_, deployment] = sample("iris-endpoint.yaml")
    deployment["spec"]["instanceCount"] = "two"
    with pytest.raises(Exception) as caught:
        await kube_api.create(ONLINE_DEPLOYMENTS, NS, deployment)
    assert caught.value.status == 422 and "instanceCount" in caught.value.body


async def test_deleting_the_custom_resource_removes_its_workload(apiserver, kube_api, cluster, controller):
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    controller()
    await eventually(lambda: len(cluster.pods()) == 2, timeout_s=10)
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {}}})
    await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue")
    await eventually(lambda: not apiserver.objects_of("deployments", NS) and not cluster.pods()
                     and not apiserver.objects_of("services", NS), timeout_s=10)


async def test_a_failed_update_keeps_the_old_version_serving(apiserver, kube_api, cluster, controller):
    await serving_sample(apiserver, kube_api, controller)
    [old] = apiserver.objects_of("deployments", NS)
    old_pods = {p["metadata"]["uid"] for p in cluster.pods()}

    cluster.fate = fates.crash_loop(3, "ValueError: the new model is broken")  # init() fails in new pods
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": "x"}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("reason", "").endswith("rolled back to the previous version") and s, timeout_s=10)
    assert status["provisioningState"] == "Failed"
    assert status["stage"] == "init" and "init()" in status["reason"]
    assert status["reason"].endswith("rolled back to the previous version")
    # the old version never stopped serving, and the failed one goes away
    await eventually(lambda: [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)]
                     == [old["metadata"]["uid"]], timeout_s=10)
    assert {p["metadata"]["uid"] for p in cluster.pods()} == old_pods
    assert the(apiserver, "deployments")["spec"]["replicas"] == 2


async def serving_sample(apiserver, kube_api, controller):
    """The sample endpoint applied and a controller run until iris-blue is Succeeded."""
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    running = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    return running


async def test_an_invalid_edit_is_reported_and_the_serving_version_keeps_serving(apiserver, kube_api, cluster,
                                                                                 controller):
    running = await serving_sample(apiserver, kube_api, controller)
    [serving] = apiserver.objects_of("deployments", NS)
    [service] = apiserver.objects_of("services", NS)
    pods = {p["metadata"]["uid"] for p in cluster.pods()}
    assert len(pods) == 2

    # a typo the CRD schema cannot catch: the controller refuses it, the old version keeps serving
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal"}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert status["stage"] == "validation"
    assert status["reason"] == "OnlineDeployment team-a/iris-blue: spec.instanceType: no InstanceType named cpu-smal"
    await after_passes(running.registry, 3)
    assert [(d["metadata"]["uid"], d["spec"]["replicas"]) for d in apiserver.objects_of("deployments", NS)] \
        == [(serving["metadata"]["uid"], 2)]
    assert {p["metadata"]["uid"] for p in cluster.pods()} == pods
    assert [s["metadata"]["uid"] for s in apiserver.objects_of("services", NS)] == [service["metadata"]["uid"]]
    status = status_of(apiserver, "onlinedeployments", "iris-blue")
    assert status["provisioningState"] == "Failed" and status["readyReplicas"] == 2
    assert status["specHash"] == serving["metadata"]["labels"]["scoregate.io/spec-hash"]

    # an edit of the endpoint that breaks its traffic: reported, the last valid traffic stays
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 60}}})
    ep_status = await eventually(lambda: (s := status_of(apiserver, "onlineendpoints", "iris"))
                                 .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert ep_status["reason"] == "OnlineEndpoint team-a/iris: spec.traffic: weights must add up to 100 (or all be 0), got 60"
    await after_passes(running.registry, 3)
    assert {p["metadata"]["uid"] for p in cluster.pods()} == pods
    assert the(apiserver, "deployments")["spec"]["replicas"] == 2
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["reason"].endswith("no InstanceType named cpu-smal")

    # valid edits again: the endpoint is Succeeded, the deployment back to Succeeded, same version
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 100}}})
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-small"}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded" and status_of(apiserver, "onlineendpoints", "iris").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [serving["metadata"]["uid"]]
    assert {p["metadata"]["uid"] for p in cluster.pods()} == pods


async def test_deleting_an_invalid_custom_resource_removes_its_workload(apiserver, kube_api, cluster, controller):
    await serving_sample(apiserver, kube_api, controller)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal"}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Failed", timeout_s=10)
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {}}})
    await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue")
    await eventually(lambda: not apiserver.objects_of("deployments", NS) and not cluster.pods()
                     and not apiserver.objects_of("services", NS), timeout_s=10)


async def test_an_endpoint_edit_that_breaks_traffic_keeps_the_last_valid_traffic(apiserver, kube_api, cluster,
                                                                                 controller):
    running = await serving_sample(apiserver, kube_api, controller)
    [serving] = apiserver.objects_of("deployments", NS)
    pods = {p["metadata"]["uid"] for p in cluster.pods()}
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 60}}})
    ep_status = await eventually(lambda: (s := status_of(apiserver, "onlineendpoints", "iris"))
                                 .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert ep_status["reason"] == "OnlineEndpoint team-a/iris: spec.traffic: weights must add up to 100 (or all be 0), got 60"
    await after_passes(running.registry, 3)
    assert [(d["metadata"]["uid"], d["spec"]["replicas"]) for d in apiserver.objects_of("deployments", NS)] \
        == [(serving["metadata"]["uid"], 2)]
    assert {p["metadata"]["uid"] for p in cluster.pods()} == pods
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"] == "Succeeded"


async def test_a_refused_write_of_the_rollouts_verdict_is_written_again(apiserver, kube_api, cluster, controller):
    """The status patch that records the first version's success (status.lastGood, what the
    routers and a next leader read) fails once: it is written again, not dropped."""
    refused = apiserver.fail_next("PATCH", "onlinedeployments", 500, subresource="status",
                                  when=lambda body: "lastGood" in apiserver.status_fields_written(body))
    running = await serving_sample(apiserver, kube_api, controller)
    await eventually(lambda: refused.hits == 1, timeout_s=10, what="the success record refused once")
    await after_passes(running.registry, 3)
    status = status_of(apiserver, "onlinedeployments", "iris-blue")
    assert status["rollout"]["state"] == "Succeeded"
    assert status["lastGood"]["environment_variables"] == {"LOG_LEVEL": "info"}


async def test_the_rollout_records_are_replaced_whole_not_merged(apiserver, kube_api, cluster, controller):
    """status.lastGood and status.rollout.version are what a next leader rolls back to and
    takes over: after an update that takes an environment variable away, neither may still
    hold it (a merge patch merged each record into the one before)."""
    await serving_sample(apiserver, kube_api, controller)
    first_hash = status_of(apiserver, "onlinedeployments", "iris-blue")["specHash"]
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": None}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("rollout", {}).get("state") == "Succeeded" and s["specHash"] != first_hash
                              and s.get("lastGood", {}).get("environment_variables") is not None and s,
                              timeout_s=15, what="the update Succeeded and recorded")
    assert status["rollout"]["kind"] == "update"
    assert status["lastGood"]["environment_variables"] == {}
    assert status["rollout"]["version"]["environment_variables"] == {}



async def test_a_deployment_whose_object_names_another_deployment_uses_is_refused(apiserver, kube_api, cluster,
                                                                                   controller):
    """Endpoint iris-ab's deployment cd and endpoint iris's deployment ab-cd both make the names
    iris-ab-cd (Service) and iris-ab-cd-HASH8 (Deployment, same spec). The older keeps them."""
    endpoint, deployment = sample("iris-endpoint.yaml")
    endpoint["spec"]["traffic"] = {"ab-cd": 100}
    deployment["spec"]["deploymentName"] = "ab-cd"
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + [endpoint, deployment])
    running = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    [first] = apiserver.objects_of("deployments", NS)
    other_endpoint, other = sample("iris-endpoint.yaml")
    other_endpoint["metadata"]["name"] = "iris-ab"
    other_endpoint["spec"]["traffic"] = {"cd": 100}
    other["metadata"]["name"] = "iris-two"  # after iris-blue when created in the same second
    other["spec"].update(endpointName="iris-ab", deploymentName="cd", instanceCount=1)
    await kubectl_apply(kube_api, [other_endpoint, other])

    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-two"))
                              .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert status["reason"] == (
        "OnlineDeployment team-a/iris-two: spec.deploymentName: its Service and Deployments would be named"
        " iris-ab-cd, as those of deployment ab-cd of endpoint iris (OnlineDeployment team-a/iris-blue);"
        " rename one of them")
    await after_passes(running.registry, 3)
    [deployment_now] = apiserver.objects_of("deployments", NS)
    assert deployment_now["metadata"]["uid"] == first["metadata"]["uid"] and deployment_now["spec"]["replicas"] == 2
    [service] = apiserver.objects_of("services", NS)
    assert service["spec"]["selector"] == {"scoregate.io/endpoint": "iris", "scoregate.io/deployment": "ab-cd"}
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"] == "Succeeded"



async def test_renaming_a_served_deployment_is_refused_and_it_keeps_serving(apiserver, kube_api, cluster,
                                                                             controller):
    """Traffic names deployment blue: an edit to deploymentName green would take it away
    (its Deployment scaled to 0, the routers finding no blue) while both statuses said Succeeded."""
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    running = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    [served] = apiserver.objects_of("deployments", NS)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"deploymentName": "green"}})

    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert status["reason"] == ("OnlineDeployment team-a/iris-blue: spec.deploymentName: cannot be changed"
                                " (was blue, now green): create another OnlineDeployment for that")
    assert status["readyReplicas"] == 2
    await after_passes(running.registry, 3)
    [deployment] = apiserver.objects_of("deployments", NS)
    assert deployment["metadata"]["uid"] == served["metadata"]["uid"] and deployment["spec"]["replicas"] == 2
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"deploymentName": "blue"}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)


async def test_a_deployment_of_an_invalid_instance_type_says_what_is_wrong_with_it(apiserver, kube_api, cluster,
                                                                                    controller):
    """`memory: 2GB` passes the CRD (int-or-string) and the controller refuses it: the
    deployment's reason said `no InstanceType named cpu-small` while kubectl shows that one."""
    types = sample("instancetypes.yaml")
    cpu_small = next(t for t in types if t["metadata"]["name"] == "cpu-small")
    cpu_small["spec"]["resources"]["limits"]["memory"] = "2GB"
    await kubectl_apply(kube_api, types + sample("iris-endpoint.yaml"))
    controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("reason") == (
        "OnlineDeployment team-a/iris-blue: spec.instanceType: the InstanceType cpu-small is not valid:"
        " InstanceType cpu-small: spec.resources.limits.memory: is not a Kubernetes quantity: '2GB'"), timeout_s=10)
    assert apiserver.objects_of("deployments", NS) == []


async def test_a_refused_edit_of_defaultinstancetype_keeps_its_deployments_as_they_are(apiserver, kube_api, cluster,
                                                                                      controller):
    """A refused defaultinstancetype is not replaced by the built-in one: that would roll its
    deployments out with other resources (2Gi) instead of keeping the last valid version."""
    endpoint, deployment = sample("iris-endpoint.yaml")
    deployment["spec"]["instanceType"] = "defaultinstancetype"
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + [endpoint, deployment])
    running = controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    [served] = apiserver.objects_of("deployments", NS)
    await kube_api.patch(INSTANCE_TYPES, None, "defaultinstancetype",
                         {"spec": {"resources": {"limits": {"memory": "4GB"}}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s, timeout_s=10)
    assert status["reason"].startswith("OnlineDeployment team-a/iris-blue: spec.instanceType: the InstanceType"
                                       " defaultinstancetype is not valid:")
    await after_passes(running.registry, 3)
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [served["metadata"]["uid"]]


async def test_names_taken_by_an_older_object_are_refused_naming_the_object_and_field(apiserver, kube_api, cluster,
                                                                                       controller):
    endpoint, deployment = sample("iris-endpoint.yaml")
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + [endpoint, deployment])
    controller(namespaces=(NS, "team-b"))
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    second = {**deployment, "metadata": {"name": "iris-blue-again", "namespace": NS}}
    elsewhere = {**endpoint, "metadata": {"name": "iris", "namespace": "team-b"}}
    await kubectl_apply(kube_api, [second, elsewhere])
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue-again").get("reason") == (
        "OnlineDeployment team-a/iris-blue-again: spec.deploymentName: endpoint iris already has a deployment blue"
        " (OnlineDeployment team-a/iris-blue)"), timeout_s=10)
    refused = ("OnlineEndpoint team-b/iris: metadata.name: the endpoint name iris is already used in namespace"
               " team-a (the older keeps it)")
    await eventually(lambda: [(o.get("status") or {}).get("reason")
                              for o in apiserver.objects_of("onlineendpoints", "team-b")] == [refused], timeout_s=10)


async def test_a_deployment_the_api_server_refuses_fails_the_rollout_with_its_message(apiserver, kube_api, cluster,
                                                                                        controller):
    """A Deployment an admission check refuses (422 Invalid, a policy webhook's denial) can
    never be created by writing it again: the rollout fails at once with the API server's
    words, not after its 20-minute budget with "HTTP 422: Unprocessable Entity"."""
    refusal = ('admission webhook "policy.example.com" denied the request: images must come from'
               ' registry.example.com')
    fault = apiserver.fail_next("POST", "deployments", 422, times=10_000, reason="Invalid", message=refusal)
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    controller()
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s.get("rollout", {}).get("state") == "Failed"
                              and s, timeout_s=10, what="the rollout failed",
                              context=lambda: str(status_of(apiserver, "onlinedeployments", "iris-blue")))
    assert status["provisioningState"] == "Failed"
    assert status["stage"] == "environment"
    assert status["reason"] == (f"environment: the Kubernetes API refused Deployment team-a/iris-blue-"
                                f"{status['specHash'][:8]} (HTTP 422): {refusal}")
    assert status["rollout"]["failed_stage"] == "environment"
    assert fault.hits >= 1 and not apiserver.objects_of("deployments", NS)


async def test_an_update_the_api_server_refuses_is_rolled_back_at_once(apiserver, kube_api, cluster, controller):
    await serving_sample(apiserver, kube_api, controller)
    [old] = apiserver.objects_of("deployments", NS)
    old_pods = {p["metadata"]["uid"] for p in cluster.pods()}
    refusal = ('Deployment.apps "iris-blue" is invalid: spec.template.spec.containers[0].env[3].name:'
               ' Invalid value: "": a valid environment variable name must consist of printable ASCII characters')
    apiserver.fail_next("POST", "deployments", 422, times=10_000, reason="Invalid", message=refusal)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": "x"}}})
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("reason", "").endswith("rolled back to the previous version") and s, timeout_s=10,
                              what="the update rolled back",
                              context=lambda: str(status_of(apiserver, "onlinedeployments", "iris-blue")))
    assert status["provisioningState"] == "Failed" and status["stage"] == "environment"
    assert refusal in status["reason"]
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [old["metadata"]["uid"]]
    assert {p["metadata"]["uid"] for p in cluster.pods()} == old_pods
    assert the(apiserver, "deployments")["spec"]["replicas"] == 2


async def test_an_instance_type_edit_kubernetes_would_refuse_keeps_its_deployments_serving(apiserver, kube_api,
                                                                                            cluster, controller):
    """requests above limits: every Deployment of such a pod template is refused by the API
    server (422). The InstanceType is refused instead, its deployments say why, and their
    running version stays as it is (no new version tried)."""
    running = await serving_sample(apiserver, kube_api, controller)
    [old] = apiserver.objects_of("deployments", NS)
    await kube_api.patch(INSTANCE_TYPES, None, "cpu-small", {"spec": {"resources": {"requests": {"cpu": "2"}}}})
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("reason") == (
        "OnlineDeployment team-a/iris-blue: spec.instanceType: the InstanceType cpu-small is not valid:"
        " InstanceType cpu-small: spec.resources.requests.cpu: 2 is more than its limit (1): Kubernetes refuses"
        " such a pod"), timeout_s=10)
    await after_passes(running.registry, 3)
    assert [d["metadata"]["uid"] for d in apiserver.objects_of("deployments", NS)] == [old["metadata"]["uid"]]
    assert the(apiserver, "deployments")["spec"]["replicas"] == 2


async def test_a_service_deleted_after_a_restart_comes_back_owned_by_its_deployment(apiserver, kube_api, cluster,
                                                                                    controller):
    """A restarted controller adopts the running version (no manifest of its own rendered);
    the Service it makes again must still be owned by the OnlineDeployment, or deleting that
    object later (with no controller running) leaves the Service behind."""
    first = await serving_sample(apiserver, kube_api, controller)
    first.stop.set()
    await asyncio.wait_for(first.task, 10)
    controller()
    await kube_api.delete(SERVICES, NS, "iris-blue")
    service = await eventually(lambda: next(iter(apiserver.objects_of("services", NS)), None), timeout_s=10)
    cr = the(apiserver, "onlinedeployments")
    assert [(r["kind"], r["uid"]) for r in service["metadata"].get("ownerReferences") or []] == [
        ("OnlineDeployment", cr["metadata"]["uid"])]
