"""Least privilege of the controller: run_controller with its own token, through a Service of
its deployment's name that it did not create (refused until deleted), a rollout,
scale-up and -down, a failed update rolled back, an invalid edit and a deletion, asks the
API for nothing deploy/rbac/controller.yaml + the team RoleBinding would refuse; what they
grant and it never used is listed below, each with why it stays."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from serving.backends.kubernetes import names
from serving.backends.kubernetes.api import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, SERVICES
from serving.backends.kubernetes.running import KubernetesControllerSettings, run_controller
from tests.kubernetes import cluster as fates
from tests.kubernetes.conftest import eventually
from tests.kubernetes.rbac import (CLUSTER, Grant, apiserver, kubeconfig_with_token, refused,  # noqa: F401
                                   shipped_rbac, unused)
from tests.kubernetes.router_cluster import SYSTEM
from tests.kubernetes.test_foreign_objects import foreign_service
from tests.kubernetes.test_controller import NS, kubectl_apply, sample, status_of

CONTROLLER_TOKEN = "controller-token"
RBAC_FILES = ("rbac/controller.yaml", "samples/team-namespace.yaml")
LEASES = ("coordination.k8s.io", "v1", "leases")
# Granted for the management API (KubernetesStore.apply/delete/set_instance_count and key
# regeneration, the `scoregate-secrets` Secret), which `scoregate controller` never calls.
MANAGEMENT_API = {Grant(NS, "scoregate.io", plural, None, verb) for plural in ("onlineendpoints", "onlinedeployments")
                  for verb in ("get", "create", "update", "patch", "delete")} | {
                  Grant(NS, "", "secrets", None, verb) for verb in ("get", "update")}


def state(apiserver) -> dict:
    return status_of(apiserver, "onlinedeployments", "iris-blue")


def json_patched_status_fields(apiserver) -> set[str]:
    """The status fields the controller wrote with JSON patches (records replaced whole)."""
    fields: set[str] = set()
    for request in apiserver:
        if (request.headers.get("Authorization") == f"Bearer {CONTROLLER_TOKEN}" and request.method.value == "PATCH"
                and request.subresource == "status" and isinstance(request.data, list)):
            fields |= apiserver.status_fields_written(request.data)
    return fields


async def test_the_controller_asks_for_what_its_rbac_grants(apiserver, kubeconfig, kube_api, cluster, tmp_path):
    # a Service of the name iris-blue would get, not scoregate's: read (get), refused, read
    # again until it is deleted
    await kube_api.create(SERVICES, NS, foreign_service())
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    settings = KubernetesControllerSettings(
        kubeconfig=kubeconfig_with_token(kubeconfig, CONTROLLER_TOKEN, tmp_path / "controller-kubeconfig"),
        namespaces=(NS,), interval_s=0.2, lease_namespace=SYSTEM, identity="controller-1")  # Lease, autoscaler on
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run_controller(settings, stop, registry=CollectorRegistry()))
    try:
        await eventually(lambda: "not managed by scoregate" in state(apiserver).get("reason", ""), timeout_s=15,
                         what="iris-blue refused")
        await kube_api.delete(SERVICES, NS, "iris-blue")
        # the first rollout: Deployment, Service, keys Secret, statuses; the aml_token signing key Secret
        await eventually(lambda: state(apiserver).get("provisioningState") == "Succeeded"
                         and apiserver.objects_of("secrets", NS, names.MANAGED_KEYS_SELECTOR)
                         and apiserver.get(("", "v1", "secrets"), NS, "scoregate-secrets"), timeout_s=15, what="iris-blue Succeeded")
        assert (apiserver.get(LEASES, SYSTEM, "scoregate-controller") or {})["spec"]["holderIdentity"] == "controller-1"

        # scale up, its first Deployment write refused as stale (re-read, written again); then down
        conflict = apiserver.fail_next("PUT", "deployments", 409)
        await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceCount": 4}})
        await eventually(lambda: state(apiserver).get("readyReplicas") == 4 and conflict.hits == 1, timeout_s=15,
                         what="4 ready replicas")
        await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceCount": 1}})
        await eventually(lambda: len(cluster.pods()) == 1 and state(apiserver).get("provisioningState")
                         == "Succeeded", timeout_s=15, what="scaled down to 1")

        # an update whose pods crash: logs read, rolled back, the new version's Deployment deleted
        cluster.fate = fates.crash_loop(3, "ValueError: the new model is broken")
        await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue",
                             {"spec": {"environmentVariables": {"LOG_LEVEL": "x"}}})
        await eventually(lambda: state(apiserver).get("reason", "").endswith("rolled back to the previous version")
                         and len(apiserver.objects_of("deployments", NS)) == 1, timeout_s=20, what="rolled back")
        cluster.fate = fates.running_ready

        # an invalid edit: reported, the last valid version kept
        await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal"}})
        await eventually(lambda: state(apiserver).get("stage") == "validation", timeout_s=15, what="invalid edit")
        assert {"lastValid", "rollout", "lastGood"} <= json_patched_status_fields(apiserver)

        # deletion: traffic taken away, the OnlineDeployment deleted orphaning its dependents
        # (so the controller, not the garbage collector, removes the Deployment and Service)
        await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {}}})
        await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue", propagation="Orphan")
        await eventually(lambda: not apiserver.objects_of("deployments", NS) and not cluster.pods()
                         and not apiserver.objects_of("services", NS), timeout_s=15, what="workload removed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert not (apiserver.get(LEASES, SYSTEM, "scoregate-controller") or {}).get("spec", {}).get("holderIdentity")

    made = apiserver.requests_of(CONTROLLER_TOKEN)
    granted = shipped_rbac(RBAC_FILES, "scoregate-controller")
    assert {g.scope for g in granted} == {NS, SYSTEM, CLUSTER}
    assert refused(granted, made) == [], "requests the RBAC in deploy/ would refuse"
    assert unused(granted, made) - MANAGEMENT_API == set(), "granted but never used"
