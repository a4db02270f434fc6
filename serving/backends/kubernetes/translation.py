"""Custom resources (camelCase) ⇄ serving.resources (snake_case), validated on the way in.

The CRD's OpenAPI schema is the first check (kubectl refuses a wrong type before the
object is stored); this is the second, for what a schema cannot say (a relative path
that means nothing on a cluster) and, through serving/online_rules.py, the rules YAML
manifests keep too (weights adding up to 100, a mirror target without live traffic,
settings and probes). Every error names the object and the field, e.g.
`OnlineDeployment team-a/iris-blue: spec.instanceCount: must be at least 0, got -1`.
The store (store.py) calls these; the workload renderer (workloads.py) reads the result.
"""

from __future__ import annotations

import re
from dataclasses import fields
from decimal import Decimal
from typing import Any, NoReturn

from ...field_reader import BaseFieldReader
from ...online_rules import MAX_INSTANCE_COUNT, MAX_PORT, MIN_PORT, ROUTES, deployment_problems, endpoint_problems
from ...resources import Deployment, Endpoint, InstanceType, ProbeSettings, RequestSettings, ScaleSettings
from . import names

ONLINE_ENDPOINT, ONLINE_DEPLOYMENT, INSTANCE_TYPE = "OnlineEndpoint", "OnlineDeployment", "InstanceType"
BATCH_ENDPOINT, BATCH_DEPLOYMENT = "BatchEndpoint", "BatchDeployment"
API_VERSION = f"{names.GROUP}/{names.VERSION}"
DEFAULT_INSTANCE_TYPE_NAME = "defaultinstancetype"

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei|e[0-9]+)?\Z")
_SUFFIXES = {"": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
             "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
             "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
             "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}
# Resources a node may overcommit: a request below the limit is fine. Any other (GPUs and
# other extended resources, hugepages) must be requested exactly at its limit.
_OVERCOMMITTABLE = {"cpu", "memory", "ephemeral-storage"}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_URI_SCHEMES = ("http://", "https://", "file://")


class CustomResourceError(ValueError):
    """A custom resource the controller cannot act on; str() names the object and field."""

    def __init__(self, kind: str, namespace: str | None, name: str, field_path: str | None,
                 message: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        self.field, self.message = field_path, message
        where = f"{namespace}/{name}" if namespace else name
        super().__init__(f"{kind} {where}: " + (f"{field_path}: " if field_path else "") + message)


# Azure ML's InstanceType: where a replica may run and what it may use. The same class
# as the local backend's, so a deployment's resolved instance type (part of its version
# hash, serving.resources.with_instance_type) is one thing on both backends.
InstanceTypeSpec = InstanceType


# Azure ML's built-in default when no InstanceType named defaultinstancetype exists.
DEFAULT_INSTANCE_TYPE = InstanceTypeSpec(
    DEFAULT_INSTANCE_TYPE_NAME, {}, {"cpu": "100m", "memory": "2Gi"}, {"cpu": "2", "memory": "2Gi"})


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _keys_to(convert, value: Any) -> Any:
    if isinstance(value, dict):
        return {convert(str(k)): _keys_to(convert, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys_to(convert, v) for v in value]
    return value


class ResourceFields(BaseFieldReader):
    """Reads one custom resource; every refusal is a CustomResourceError naming the object
    and the field, spelled in camelCase as the user wrote it."""

    case = staticmethod(snake_to_camel)
    mapping_noun = "an object"

    def __init__(self, kind: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        self.kind, self.namespace = kind, meta.get("namespace")
        self.metadata_name = str(meta.get("name") or "?")

    def fail(self, field_path: str | None, message: str) -> NoReturn:
        raise CustomResourceError(self.kind, self.namespace, self.metadata_name, field_path, message)

    def uri(self, value: Any, path: str) -> str:
        text = self.string(value, path)
        if not (text.startswith(_URI_SCHEMES) or text.startswith("/")):
            self.fail(path, "must be an http(s):// or file:// URI or an absolute path in the image"
                            f" (a relative path means nothing on a cluster), got {text!r}")
        return text


def _settings_to_camel(settings) -> dict:
    return {snake_to_camel(f.name): getattr(settings, f.name) for f in fields(settings)}


# -- OnlineEndpoint -------------------------------------------------------------------------

_ENDPOINT_SPEC = {"authMode", "traffic", "mirrorTraffic", "description", "tags"}


def endpoint_from_custom_resource(obj: dict) -> Endpoint:
    f = ResourceFields(ONLINE_ENDPOINT, obj)
    name = f.name(f.metadata_name, "metadata.name")
    spec = f.mapping(obj.get("spec"), "spec")
    f.check_fields(spec, _ENDPOINT_SPEC, "spec.")
    endpoint = Endpoint(name=name, auth_mode=spec.get("authMode", "key"),
                        traffic=f.weights(spec.get("traffic"), "spec.traffic"),
                        mirror_traffic=f.weights(spec.get("mirrorTraffic"), "spec.mirrorTraffic"),
                        description=str(spec.get("description") or ""),
                        tags=f.string_map(spec.get("tags"), "spec.tags"))
    f.check(endpoint_problems(endpoint, case=snake_to_camel), "spec.")
    return endpoint


def endpoint_to_custom_resource(endpoint: Endpoint, namespace: str) -> dict:
    return {
        "apiVersion": API_VERSION, "kind": ONLINE_ENDPOINT,
        "metadata": {"name": endpoint.name, "namespace": namespace},
        "spec": {"authMode": endpoint.auth_mode, "traffic": dict(endpoint.traffic),
                 "mirrorTraffic": dict(endpoint.mirror_traffic),
                 "description": endpoint.description, "tags": dict(endpoint.tags)},
    }


# -- OnlineDeployment -----------------------------------------------------------------------

_DEPLOYMENT_SPEC = {"endpointName", "deploymentName", "model", "codeConfiguration", "environment",
                    "environmentVariables", "instanceType", "instanceCount", "requestSettings",
                    "scaleSettings", "livenessProbe", "readinessProbe", "description", "tags"}


def deployment_name_of(obj: dict) -> str:
    """The scoregate name: spec.deploymentName, else metadata.name (see docs/kubernetes.md)."""
    return (obj.get("spec") or {}).get("deploymentName") or (obj.get("metadata") or {}).get("name", "")


def deployment_from_custom_resource(obj: dict) -> Deployment:
    f = ResourceFields(ONLINE_DEPLOYMENT, obj)
    spec = f.mapping(obj.get("spec"), "spec")
    f.check_fields(spec, _DEPLOYMENT_SPEC, "spec.")
    name_field = "spec.deploymentName" if spec.get("deploymentName") else "metadata.name"
    name = f.name(deployment_name_of(obj), name_field)
    endpoint_name = f.name(spec.get("endpointName"), "spec.endpointName")

    model = f.mapping(spec.get("model"), "spec.model")
    f.check_fields(model, {"name", "version", "path", "description"}, "spec.model.")
    model_path = f.uri(model["path"], "spec.model.path") if "path" in model else None

    code = f.mapping(spec.get("codeConfiguration"), "spec.codeConfiguration")
    f.check_fields(code, {"code", "scoringScript"}, "spec.codeConfiguration.")
    if not code:
        f.fail("spec.codeConfiguration", "is required (code and scoringScript)")
    code_uri = f.uri(code.get("code"), "spec.codeConfiguration.code")
    scoring_script = f.string(code.get("scoringScript"), "spec.codeConfiguration.scoringScript")

    environment = _keys_to(camel_to_snake, f.mapping(spec.get("environment"), "spec.environment"))
    inference = environment.get("inference_config")
    if inference is not None:
        for route in ROUTES:
            where = f"spec.environment.inferenceConfig.{snake_to_camel(route)}"
            body = f.mapping(inference.get(route), where)
            f.integer(body.get("port"), f"{where}.port", MIN_PORT, MAX_PORT)
            f.string(body.get("path"), f"{where}.path")
        if not environment.get("image"):
            f.fail("spec.environment.image", "is required with inferenceConfig (the model server's image)")

    variables = f.string_map(spec.get("environmentVariables"), "spec.environmentVariables")
    instance_type = f.string(spec.get("instanceType", DEFAULT_INSTANCE_TYPE_NAME), "spec.instanceType")
    if not _DNS_SUBDOMAIN.match(instance_type):
        f.fail("spec.instanceType", f"must name an InstanceType object (a lowercase DNS name), got {instance_type!r}")
    instance_count = f.integer(spec.get("instanceCount", 1), "spec.instanceCount", 0, MAX_INSTANCE_COUNT)
    request_settings = f.settings(RequestSettings, spec.get("requestSettings"), "spec.requestSettings")
    scale_settings = f.settings(ScaleSettings, spec.get("scaleSettings"), "spec.scaleSettings")
    liveness = f.settings(ProbeSettings, spec.get("livenessProbe"), "spec.livenessProbe")
    readiness = f.settings(ProbeSettings, spec.get("readinessProbe"), "spec.readinessProbe")
    deployment = Deployment(
        name=name, endpoint_name=endpoint_name, code=code_uri, scoring_script=scoring_script,
        model_path=model_path, environment=environment, environment_variables=variables,
        instance_type=instance_type, instance_count=instance_count,
        request_settings=request_settings, scale_settings=scale_settings,
        liveness_probe=liveness, readiness_probe=readiness,
        description=str(spec.get("description") or ""), tags=f.string_map(spec.get("tags"), "spec.tags"))
    f.check(deployment_problems(deployment, case=snake_to_camel), "spec.")
    return deployment


def same_deployment(obj: dict, last: Deployment, deployment: Deployment) -> None:
    """An edit may not move a served deployment to another name or endpoint: the routers
    would lose the deployment the endpoint's traffic names (a new object makes another one)."""
    for field_path, was, now in (("spec.endpointName", last.endpoint_name, deployment.endpoint_name),
                                 ("spec.deploymentName", last.name, deployment.name)):
        if now != was:
            raise CustomResourceError(
                ONLINE_DEPLOYMENT, obj["metadata"].get("namespace"), obj["metadata"]["name"], field_path,
                f"cannot be changed (was {was}, now {now}): create another OnlineDeployment for that")


def object_name_taken(obj: dict, object_name: str, holder: dict) -> CustomResourceError:
    """`obj`'s deployment would get the Service and Deployment names of `holder`'s, another
    deployment of its namespace (endpoint and deployment names are joined with '-')."""
    spec, meta = holder.get("spec") or {}, holder["metadata"]
    field_path = "spec.deploymentName" if (obj.get("spec") or {}).get("deploymentName") else "metadata.name"
    return CustomResourceError(
        ONLINE_DEPLOYMENT, obj["metadata"].get("namespace"), obj["metadata"]["name"], field_path,
        f"its Service and Deployments would be named {object_name}, as those of deployment"
        f" {deployment_name_of(holder)} of endpoint {spec.get('endpointName')}"
        f" (OnlineDeployment {meta.get('namespace')}/{meta['name']}); rename one of them")


def deployment_to_custom_resource(deployment: Deployment, namespace: str) -> dict:
    spec: dict[str, Any] = {
        "endpointName": deployment.endpoint_name, "deploymentName": deployment.name,
        "codeConfiguration": {"code": deployment.code, "scoringScript": deployment.scoring_script},
        "environment": _keys_to(snake_to_camel, dict(deployment.environment)),
        "environmentVariables": dict(deployment.environment_variables),
        "instanceType": deployment.instance_type, "instanceCount": deployment.instance_count,
        "requestSettings": _settings_to_camel(deployment.request_settings),
        "scaleSettings": _settings_to_camel(deployment.scale_settings),
        "livenessProbe": _settings_to_camel(deployment.liveness_probe),
        "readinessProbe": _settings_to_camel(deployment.readiness_probe),
        "description": deployment.description, "tags": dict(deployment.tags),
    }
    if deployment.model_path:
        spec["model"] = {"path": deployment.model_path}
    return {"apiVersion": API_VERSION, "kind": ONLINE_DEPLOYMENT,
            "metadata": {"name": names.dns_label(f"{deployment.endpoint_name}-{deployment.name}"),
                         "namespace": namespace},
            "spec": spec}


# -- InstanceType ---------------------------------------------------------------------------

def quantity_value(quantity: str) -> Decimal:
    """The number a Kubernetes quantity (one `_QUANTITY` accepts) stands for: 500m → 0.5, 1Gi → 2**30."""
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)(.*)\Z", quantity)
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix.startswith("e"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIXES[suffix]


def _check_requests_within_limits(f: ResourceFields, requests: dict[str, str], limits: dict[str, str]) -> None:
    """The rules the API server applies to a container's resources: it refuses a Deployment
    whose pod template breaks them (422), so the InstanceType is refused here, naming the field."""
    for resource, request in requests.items():
        limit = limits.get(resource)
        where = f"spec.resources.requests.{resource}"
        if resource in _OVERCOMMITTABLE:
            if limit is not None and quantity_value(request) > quantity_value(limit):
                f.fail(where, f"{request} is more than its limit ({limit}): Kubernetes refuses such a pod")
        elif limit is None:
            f.fail(where, f"{resource} cannot be overcommitted: set spec.resources.limits.{resource} too"
                          " (to the same value)")
        elif quantity_value(request) != quantity_value(limit):
            f.fail(where, f"{resource} cannot be overcommitted: the request ({request}) must equal the limit"
                          f" ({limit})")


def instance_type_from_custom_resource(obj: dict) -> InstanceTypeSpec:
    f = ResourceFields(INSTANCE_TYPE, obj)
    spec = f.mapping(obj.get("spec"), "spec")
    f.check_fields(spec, {"nodeSelector", "resources"}, "spec.")
    resources = f.mapping(spec.get("resources"), "spec.resources")
    f.check_fields(resources, {"requests", "limits"}, "spec.resources.")
    quantities = {}
    for part in ("requests", "limits"):
        quantities[part] = f.string_map(resources.get(part), f"spec.resources.{part}")
        for resource, quantity in quantities[part].items():
            if not _QUANTITY.match(quantity):
                f.fail(f"spec.resources.{part}.{resource}", f"is not a Kubernetes quantity: {quantity!r}")
    _check_requests_within_limits(f, quantities["requests"], quantities["limits"])
    return InstanceTypeSpec(name=f.metadata_name,
                            node_selector=f.string_map(spec.get("nodeSelector"), "spec.nodeSelector"),
                            requests=quantities["requests"], limits=quantities["limits"])


def instance_type_to_custom_resource(spec: InstanceTypeSpec) -> dict:
    return {"apiVersion": API_VERSION, "kind": INSTANCE_TYPE, "metadata": {"name": spec.name},
            "spec": {"nodeSelector": dict(spec.node_selector),
                     "resources": {"requests": dict(spec.requests), "limits": dict(spec.limits)}}}
