"""A Service or Deployment with the name scoregate would give an OnlineDeployment's objects,
but that scoregate did not create (a user's own, another tool's), is never adopted: the
controller neither changes nor deletes it, the OnlineDeployment says Failed naming the
object, and once the object is gone the next reconcile rolls the deployment out."""

from __future__ import annotations

import pytest

from serving.backends.kubernetes import names
from serving.backends.kubernetes.foreign import why_foreign
from serving.backends.kubernetes.api import DEPLOYMENTS, ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, SERVICES
from serving.backends.kubernetes.translation import deployment_from_custom_resource, instance_type_from_custom_resource
from serving.resources import with_instance_type
from tests.kubernetes.conftest import eventually
from tests.kubernetes.test_controller import (NS, after_passes, controller, kubectl_apply, sample,  # noqa: F401
                                              status_of)

USER_LABELS = {"app": "my-own-iris", "team": "a"}


def version_name_of_sample() -> str:
    """The Deployment name the controller gives iris-blue's first version (its spec hash)."""
    _, deployment = sample("iris-endpoint.yaml")
    types = [instance_type_from_custom_resource(t) for t in sample("instancetypes.yaml")]
    resolved = with_instance_type(deployment_from_custom_resource({**deployment, "metadata": {
        **deployment["metadata"], "namespace": NS}}), types)
    return names.version_name("iris", "blue", resolved.replica_spec_hash())


def foreign_service() -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "iris-blue", "namespace": NS, "labels": dict(USER_LABELS)},
            "spec": {"type": "ClusterIP", "selector": {"app": "my-own-iris"},
                     "ports": [{"name": "web", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}}


def foreign_deployment() -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": version_name_of_sample(), "namespace": NS, "labels": dict(USER_LABELS)},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "my-own-iris"}},
                     "template": {"metadata": {"labels": dict(USER_LABELS)},
                                  "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}


FOREIGN = {"Service": (SERVICES, "services", foreign_service), "Deployment": (DEPLOYMENTS, "deployments",
                                                                           foreign_deployment)}


def kept_part(obj: dict | None) -> dict | None:
    """What the controller must never change: identity, spec, labels, annotations, owners
    (status and resourceVersion are the cluster's: the fake ReplicaSet controller writes them)."""
    if obj is None:
        return None
    meta = obj["metadata"]
    return {"uid": meta["uid"], "labels": meta.get("labels"), "annotations": meta.get("annotations"),
            "ownerReferences": meta.get("ownerReferences"), "spec": obj["spec"]}


def writes_to(apiserver, plural: str, name: str) -> list[str]:
    """Every write request (not the status) made to that object."""
    return [f"{r.method.value} {r.resource.plural}/{r.name}" for r in apiserver
            if r.method.value in ("PUT", "PATCH", "DELETE") and r.resource is not None
            and r.resource.plural == plural and r.name == name and r.subresource != "status"]


def objects_named(apiserver, plural: str, name: str) -> list[dict]:
    return [o for o in apiserver.objects_of(plural, NS) if o["metadata"]["name"] == name]


async def refused_with_foreign(apiserver, kube_api, controller, kind: str):
    """The foreign object first, then the sample endpoint; the controller refuses it."""
    res, plural, make = FOREIGN[kind]
    foreign = await kube_api.create(res, NS, make())
    name = foreign["metadata"]["name"]
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    running = controller()
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("provisioningState") == "Failed" and s, timeout_s=10,
                              what="iris-blue Failed", context=lambda: str(status_of(apiserver, "onlinedeployments",
                                                                                     "iris-blue")))
    assert status["stage"] == "validation"
    assert f"{kind} {NS}/{name}" in status["reason"] and "not managed by scoregate" in status["reason"]
    assert status["reason"] == (
        f"OnlineDeployment team-a/iris-blue: spec.deploymentName: its {kind} would be named {name}, and {kind}"
        f" team-a/{name} exists and is not managed by scoregate (it has no label app.kubernetes.io/managed-by="
        f"scoregate); scoregate does not take over objects it did not create: delete or rename that {kind}, or"
        " rename this deployment")
    await after_passes(running.registry, 3)
    return running, foreign, plural, name


@pytest.mark.parametrize("kind", ["Service", "Deployment"])
async def test_a_foreign_object_of_the_name_is_left_alone_and_reported(apiserver, kube_api, cluster, controller,
                                                                       kind):
    running, foreign, plural, name = await refused_with_foreign(apiserver, kube_api, controller, kind)
    [now] = objects_named(apiserver, plural, name)
    assert kept_part(now) == kept_part(foreign)
    assert writes_to(apiserver, plural, name) == []
    # nothing of scoregate's runs under the other name either, and the status stays Failed
    assert [d["metadata"]["name"] for d in apiserver.objects_of("deployments", NS)] == (
        [name] if kind == "Deployment" else [])
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"] == "Failed"

    # the foreign object goes: the next reconcile creates scoregate's own, and the rollout succeeds
    await kube_api.delete(FOREIGN[kind][0], NS, name)
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=20, what="iris-blue Succeeded after the foreign object went",
                     context=lambda: str(status_of(apiserver, "onlinedeployments", "iris-blue")))
    [own] = objects_named(apiserver, plural, name)
    assert own["metadata"]["uid"] != foreign["metadata"]["uid"]
    assert own["metadata"]["labels"][names.LABEL_MANAGED_BY] == names.MANAGER
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["reason"] == ""


@pytest.mark.parametrize("kind", ["Service", "Deployment"])
async def test_deleting_the_online_deployment_leaves_the_foreign_object_in_place(apiserver, kube_api, cluster,
                                                                                 controller, kind):
    running, foreign, plural, name = await refused_with_foreign(apiserver, kube_api, controller, kind)
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {}}})
    await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue")
    await eventually(lambda: not apiserver.objects_of("onlinedeployments", NS), timeout_s=10)
    await after_passes(running.registry, 3)
    [now] = objects_named(apiserver, plural, name)
    assert kept_part(now) == kept_part(foreign)
    assert writes_to(apiserver, plural, name) == []
    if kind == "Deployment":  # its pods keep running
        assert [p["metadata"]["labels"] for p in cluster.pods()] == [USER_LABELS]


OWNER = {"apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment", "name": "iris-blue", "uid": "uid-1",
         "controller": True, "blockOwnerDeletion": True}


def labelled(labels: dict, owners: list[dict] | None = None) -> dict:
    return {"metadata": {"name": "iris-blue", "namespace": NS, "labels": labels, "ownerReferences": owners or []}}


def test_what_counts_as_scoregates_own_object():
    own = {**names.deployment_labels("iris", "blue")}
    assert why_foreign(labelled(own, [OWNER]), "iris", "blue", OWNER) is None
    assert why_foreign(labelled(own), "iris", "blue", None) is None  # owner unknown: the labels decide
    assert why_foreign(labelled(USER_LABELS), "iris", "blue", None) == (
        "it has no label app.kubernetes.io/managed-by=scoregate")
    assert why_foreign(labelled(names.deployment_labels("iris-ab", "cd"), [OWNER]), "iris", "blue", OWNER) == (
        "its labels name deployment cd of endpoint iris-ab")
    # orphaned from its OnlineDeployment (deleted with --cascade=orphan): the controller removes it
    assert why_foreign(labelled(own), "iris", "blue", OWNER) is None
    # owned by another OnlineDeployment (also an earlier one of the name)
    other = {**OWNER, "name": "iris-green", "uid": "uid-2"}
    assert why_foreign(labelled(own, [other]), "iris", "blue", OWNER) == (
        "it belongs to OnlineDeployment team-a/iris-green")
    assert why_foreign(labelled(own, [{**OWNER, "uid": "uid-0"}]), "iris", "blue", OWNER) == (
        "it belongs to OnlineDeployment team-a/iris-blue (an earlier object of that name)")
