"""Offline checks of everything under deploy/ and of the objects the backend renders:
Kubernetes schemas (kubernetes-validate, strict), custom resources against their CRD's
schema, structural CRD schemas, and the Pod Security Standards the pods must meet."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from serving.backends.kubernetes.translation import InstanceTypeSpec, deployment_from_custom_resource
from serving.backends.kubernetes.workloads import Placement, WorkloadSettings, render_deployment, render_service

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
FILES = sorted(DEPLOY.rglob("*.yaml"))
DOCS = [(path, doc) for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc]
CRDS = {(doc["spec"]["group"], doc["spec"]["names"]["kind"]): doc for _, doc in DOCS
        if doc["kind"] == "CustomResourceDefinition"}


def doc_id(item) -> str:
    path, doc = item
    return f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}"


def crd_schema(doc: dict) -> dict | None:
    group = doc["apiVersion"].split("/")[0]
    crd = CRDS.get((group, doc["kind"]))
    if crd is None:
        return None
    [version] = [v for v in crd["spec"]["versions"] if f"{group}/{v['name']}" == doc["apiVersion"]]
    return version["schema"]["openAPIV3Schema"]


def validate_custom(doc: dict, schema: dict) -> None:
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    properties = {k: v for k, v in schema.get("properties", {}).items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator({**schema, "properties": properties}).validate(body)


def test_there_is_something_to_check():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "OnlineEndpoint", "OnlineDeployment",
            "InstanceType", "BatchEndpoint", "BatchDeployment", "PodDisruptionBudget", "Namespace"} <= kinds
    assert len(CRDS) == 5


@pytest.mark.parametrize("item", DOCS, ids=[doc_id(d) for d in DOCS])
def test_every_manifest_is_valid(item):
    _, doc = item
    schema = crd_schema(doc)
    if schema is not None:
        validate_custom(doc, schema)
    else:
        kubernetes_validate.validate(doc, latest_version(), strict=True)


def _structural_problems(node: dict, path: str) -> list[str]:
    problems = []
    if "type" not in node and not node.get("x-kubernetes-int-or-string") \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for name, child in (node.get("properties") or {}).items():
        problems += _structural_problems(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]")
    return problems


@pytest.mark.parametrize("crd", list(CRDS.values()), ids=list(k for _, k in CRDS))
def test_crd_schemas_are_structural_and_have_a_status_subresource(crd):
    for version in crd["spec"]["versions"]:
        assert _structural_problems(version["schema"]["openAPIV3Schema"], "") == []
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert set(columns) >= {"Age"}
        if "provisioningState" in version["schema"]["openAPIV3Schema"]["properties"]["status"].get("properties", {}):
            # `kubectl get -o wide` says why an object is Failed, for every kind that says it
            assert columns["Reason"]["jsonPath"] == ".status.reason" and columns["Reason"]["priority"] == 1


def test_crd_bounds_are_the_ones_the_controller_checks():
    # A CRD is static YAML, so it repeats the limits serving/online_rules.py keeps; kubectl
    # refuses by the CRD, the controller by the rules: they must say the same.
    from serving.online_rules import FULL_TRAFFIC, MAX_INSTANCE_COUNT, MAX_PORT, MIN_PORT, ROUTES, SCALE_TYPES

    def spec_of(kind: str) -> dict:
        return CRDS[("scoregate.io", kind)]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
            "spec"]["properties"]

    deployment = spec_of("OnlineDeployment")
    count = deployment["instanceCount"]
    assert (count["minimum"], count["maximum"]) == (0, MAX_INSTANCE_COUNT)
    scale = deployment["scaleSettings"]["properties"]
    assert tuple(scale["type"]["enum"]) == SCALE_TYPES
    assert (scale["targetUtilizationPercentage"]["minimum"], scale["targetUtilizationPercentage"]["maximum"]) \
        == (1, 100)
    routes = deployment["environment"]["properties"]["inferenceConfig"]["properties"]
    assert set(routes) == {"livenessRoute", "readinessRoute", "scoringRoute"} and len(ROUTES) == 3
    for route in routes.values():
        port = route["properties"]["port"]
        assert (port["minimum"], port["maximum"]) == (MIN_PORT, MAX_PORT)
    weight = spec_of("OnlineEndpoint")["traffic"]["additionalProperties"]
    assert (weight["minimum"], weight["maximum"]) == (0, FULL_TRAFFIC)


# -- Pod Security Standards (https://kubernetes.io/docs/concepts/security/pod-security-standards/) --
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pod_security_violations(pod: dict, level: str) -> list[str]:
    out = [f"{k} is set" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    pod_security = pod.get("securityContext") or {}
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if "hostPath" in kinds:
            out.append(f"volume {volume['name']} is a hostPath")
        if level == "restricted" and not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {volume['name']} has a type restricted forbids")
    if (pod_security.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("seccomp is Unconfined")
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name} is privileged")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if not added <= BASELINE_CAPABILITIES:
            out.append(f"{name} adds {added - BASELINE_CAPABILITIES}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name} uses a hostPort")
        if level == "restricted":
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{name} may escalate privileges")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                out.append(f"{name} does not drop ALL capabilities")
            if not (sc.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                out.append(f"{name} may run as root")
            seccomp = (sc.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                out.append(f"{name} has no seccomp profile")
    return out


def rendered(sample: str, index: int = 0) -> tuple[dict, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "samples" / sample).read_text()) if d]
    deployment = deployment_from_custom_resource([d for d in docs if d["kind"] == "OnlineDeployment"][index])
    placement = Placement("team-a", InstanceTypeSpec("cpu-small", {"pool": "cpu"}, {"cpu": "1"}, {"memory": "1Gi"}),
                          {"apiVersion": "scoregate.io/v1", "kind": "OnlineDeployment", "name": "x",
                           "uid": "0000", "controller": True, "blockOwnerDeletion": True})
    return (render_deployment(deployment, deployment.replica_spec_hash(), 2, placement, WorkloadSettings()),
            render_service(deployment, placement))


@pytest.mark.parametrize("sample", ["iris-endpoint.yaml", "custom-server-deployment.yaml"])
def test_rendered_workloads_are_valid_and_meet_pod_security(sample):
    deployment, service = rendered(sample)
    kubernetes_validate.validate(deployment, latest_version(), strict=True)
    kubernetes_validate.validate(service, latest_version(), strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod_security_violations(pod, "baseline") == []
    assert pod_security_violations(pod, "restricted") == []
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ["controller.yaml", "router.yaml"])
def test_scoregate_components_meet_the_restricted_standard(name):
    for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
        if doc and doc["kind"] == "Deployment":
            assert pod_security_violations(doc["spec"]["template"]["spec"], "restricted") == []


def test_the_checker_catches_what_it_should():
    bad = {"hostNetwork": True, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
           "containers": [{"name": "c", "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}}]}
    assert len(pod_security_violations(bad, "baseline")) == 4
