"""Render the apps/v1 Deployment and the Service of one scoregate deployment (pure).

One apps/v1 Deployment per *version* (spec hash) of a scoregate deployment, so a rolling
update is two Deployments side by side that the planner scales against each other, and
one Service per scoregate deployment selecting every version (the router discovers ready
pods through its EndpointSlices). Pods meet the "baseline" Pod Security Standard and most
of "restricted": non-root, no privilege escalation, all capabilities dropped, seccomp
RuntimeDefault, no host namespaces, read-only root filesystem with /tmp an emptyDir.
An init container downloads the model and the code into an emptyDir shared with the
model server (serving/backends/kubernetes/downloading.py). backend.py applies these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ...resources import Deployment, ProbeSettings
from . import names
from .translation import DEFAULT_INSTANCE_TYPE, InstanceTypeSpec

APP_DIR = "/var/azureml-app"
MODEL_DIR = f"{APP_DIR}/model"
CODE_DIR = f"{APP_DIR}/code"
MODEL_SERVER_PORT = 5001
SERVICE_PORT = 80


@dataclass(frozen=True)
class WorkloadSettings:
    """How pods are built: images and the user they run as (from the controller's flags)."""

    image: str = "ghcr.io/scoregate/scoregate:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 1000
    termination_grace_s: int = 30
    rollout_budget_s: int = 1200
    download_requests: dict[str, str] = field(default_factory=lambda: {"cpu": "50m", "memory": "128Mi"})
    download_limits: dict[str, str] = field(default_factory=lambda: {"memory": "512Mi"})


@dataclass(frozen=True)
class Placement:
    """Where a deployment's pods go: namespace, instance type and owning custom resource."""

    namespace: str
    instance_type: InstanceTypeSpec = DEFAULT_INSTANCE_TYPE
    owner: dict | None = None  # an ownerReference (the OnlineDeployment), when known


class PlacementResolver(Protocol):
    def placement(self, deployment: Deployment) -> Placement: ...


@dataclass(frozen=True)
class StaticPlacement:
    """One namespace and a fixed table of instance types (no custom resources needed)."""

    namespace: str = "default"
    instance_types: dict[str, InstanceTypeSpec] = field(default_factory=dict)

    def placement(self, deployment: Deployment) -> Placement:
        spec = self.instance_types.get(deployment.instance_type, DEFAULT_INSTANCE_TYPE)
        return Placement(self.namespace, spec)


def owner_reference(obj: dict, *, controller: bool = True) -> dict:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"], "controller": controller, "blockOwnerDeletion": True}


def _container_security(read_only_root: bool) -> dict:
    return {"allowPrivilegeEscalation": False, "privileged": False,
            "readOnlyRootFilesystem": read_only_root, "capabilities": {"drop": ["ALL"]}}


def _probe(settings: ProbeSettings, port, path: str, *, liveness: bool) -> dict:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": settings.initial_delay,
        "periodSeconds": max(1, settings.period),
        "timeoutSeconds": max(1, settings.timeout),
        # Kubernetes requires 1 for liveness probes.
        "successThreshold": 1 if liveness else max(1, settings.success_threshold),
        "failureThreshold": max(1, settings.failure_threshold),
    }


def serving_port(deployment: Deployment) -> int:
    inference = deployment.environment.get("inference_config")
    return int(inference["scoring_route"]["port"]) if inference else MODEL_SERVER_PORT


def _model_server(deployment: Deployment, settings: WorkloadSettings, instance_type: InstanceTypeSpec) -> dict:
    inference = deployment.environment.get("inference_config")
    port = serving_port(deployment)
    env = [{"name": "AZUREML_MODEL_DIR", "value": MODEL_DIR},
           {"name": "PYTHONUNBUFFERED", "value": "1"},
           {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
           {"name": "HOME", "value": "/tmp"}]
    env += [{"name": k, "value": v} for k, v in sorted(deployment.environment_variables.items())]
    container = {
        "name": "model-server",
        "image": deployment.environment.get("image") or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": dict(instance_type.requests), "limits": dict(instance_type.limits)},
        "volumeMounts": [{"name": "app", "mountPath": APP_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if inference:
        # A custom model server (MLServer, Triton, ...): its own entrypoint, routes and ports.
        live, ready = inference["liveness_route"], inference["readiness_route"]
        container["livenessProbe"] = _probe(deployment.liveness_probe, int(live["port"]), live["path"], liveness=True)
        container["readinessProbe"] = _probe(deployment.readiness_probe, int(ready["port"]), ready["path"],
                                             liveness=False)
        container["securityContext"] = _container_security(read_only_root=False)
    else:
        container["command"] = ["python", "-m", "serving.modelserver", "--code", CODE_DIR,
                                "--scoring-script", deployment.scoring_script or "score.py",
                                "--model-dir", MODEL_DIR, "--host", "0.0.0.0", "--port", str(port)]
        container["livenessProbe"] = _probe(deployment.liveness_probe, "http", "/", liveness=True)
        container["readinessProbe"] = _probe(deployment.readiness_probe, "http", "/", liveness=False)
        container["securityContext"] = _container_security(read_only_root=True)
    return container


def _downloader(deployment: Deployment, settings: WorkloadSettings) -> dict:
    command = ["python", "-m", "serving.backends.kubernetes.downloading", "--dest", APP_DIR]
    if deployment.model_path:
        command += ["--model", deployment.model_path]
    if deployment.code:
        command += ["--code", deployment.code]
    return {
        "name": "fetch-model",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
        "resources": {"requests": dict(settings.download_requests), "limits": dict(settings.download_limits)},
        "volumeMounts": [{"name": "app", "mountPath": APP_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def render_deployment(deployment: Deployment, spec_hash: str, replicas: int, placement: Placement,
                      settings: WorkloadSettings) -> dict:
    """The apps/v1 Deployment of one version, with `replicas` pods."""
    endpoint, name = deployment.endpoint_name, deployment.name
    labels = names.replica_labels(endpoint, name, spec_hash)
    metadata = {"name": names.version_name(endpoint, name, spec_hash), "namespace": placement.namespace,
                "labels": labels,
                "annotations": {names.ANNOTATION_INSTANCE_TYPE: placement.instance_type.name}}
    if placement.owner:
        metadata["ownerReferences"] = [placement.owner]
    pod_spec = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False, "hostPID": False, "hostIPC": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": settings.termination_grace_s,
        "initContainers": [_downloader(deployment, settings)],
        "containers": [_model_server(deployment, settings, placement.instance_type)],
        "volumes": [{"name": "app", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"medium": "Memory"}}],
    }
    if placement.instance_type.node_selector:
        pod_spec["nodeSelector"] = dict(placement.instance_type.node_selector)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 1,
            "progressDeadlineSeconds": settings.rollout_budget_s,
            "selector": {"matchLabels": names.selector_of(endpoint, name, spec_hash)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def render_service(deployment: Deployment, placement: Placement) -> dict:
    """The Service in front of every version of a scoregate deployment."""
    endpoint, name = deployment.endpoint_name, deployment.name
    metadata = {"name": names.service_name(endpoint, name), "namespace": placement.namespace,
                "labels": names.deployment_labels(endpoint, name)}
    if placement.owner:
        metadata["ownerReferences"] = [placement.owner]
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"type": "ClusterIP", "selector": names.selector_of(endpoint, name),
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]},
    }
