"""BatchEndpoint / BatchDeployment custom resources → serving.batch resources (pure).

The same rules as batch YAML (serving/batch/manifests.py, settings.py), read from the
CRs' camelCase and reported the way translation.py reports online CRs, naming the object
and the field: `BatchDeployment team-a/iris-batch-classifier: spec.miniBatchSize: must be
from 1 to 100000, got 0`. Model and code are URIs here (file://, http(s)://, optionally
`#sha256=`); batch_sync.py fetches them and fills in the local folders.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...batch.resources import BatchDeployment, BatchEndpoint
from ...batch.settings import SettingsError, apply_settings
from ...online_rules import valid_env_var_name
from .translation import BATCH_DEPLOYMENT, BATCH_ENDPOINT, ResourceFields, camel_to_snake, snake_to_camel

_ENDPOINT_SPEC = {"authMode", "defaults", "description", "tags"}
_DEPLOYMENT_SPEC = {"endpointName", "deploymentName", "description", "tags", "model", "codeConfiguration",
                    "environment", "environmentVariables", "instanceType", "instanceCount", "miniBatchSize",
                    "maxConcurrencyPerInstance", "errorThreshold", "retrySettings", "outputAction",
                    "outputFileName", "loggingLevel"}
_SETTINGS = ("instanceCount", "miniBatchSize", "maxConcurrencyPerInstance", "errorThreshold", "retrySettings",
             "outputAction", "outputFileName", "loggingLevel")
_URI_SCHEMES = ("http://", "https://", "file://")


@dataclass(frozen=True)
class BatchDeploymentSource:
    """A parsed BatchDeployment whose code and model are still URIs."""

    deployment: BatchDeployment  # code / model_path: the URIs, until fetched
    code_uri: str
    model_uri: str | None


def batch_endpoint_from_custom_resource(obj: dict) -> BatchEndpoint:
    f = ResourceFields(BATCH_ENDPOINT, obj)
    spec = f.mapping(obj.get("spec"), "spec")
    f.check_fields(spec, _ENDPOINT_SPEC, "spec.")
    name = f.name(f.metadata_name, "metadata.name")
    auth_mode = spec.get("authMode", "key")
    if auth_mode != "key":
        f.fail("spec.authMode", f"batch endpoints take key authentication only, got {auth_mode!r}")
    default = f.default_deployment(spec.get("defaults"), "spec.defaults")
    return BatchEndpoint(name=name, auth_mode=auth_mode, default_deployment=default,
                         description=str(spec.get("description") or ""),
                         tags=f.string_map(spec.get("tags"), "spec.tags"))


def batch_deployment_from_custom_resource(obj: dict) -> BatchDeploymentSource:
    f = ResourceFields(BATCH_DEPLOYMENT, obj)
    spec = f.mapping(obj.get("spec"), "spec")
    f.check_fields(spec, _DEPLOYMENT_SPEC, "spec.")
    endpoint_name = f.name(spec.get("endpointName"), "spec.endpointName")
    name = f.name(spec.get("deploymentName", f.metadata_name), "spec.deploymentName")
    code = f.mapping(spec.get("codeConfiguration"), "spec.codeConfiguration")
    code_uri = _uri(f, code.get("code"), "spec.codeConfiguration.code")
    script = f.string(code.get("scoringScript"), "spec.codeConfiguration.scoringScript")
    model = f.mapping(spec.get("model"), "spec.model")
    model_uri = _uri(f, model["path"], "spec.model.path") if "path" in model else None
    env_vars = f.string_map(spec.get("environmentVariables"), "spec.environmentVariables")
    for key in env_vars:
        if not valid_env_var_name(key):
            f.fail(f"spec.environmentVariables.{key}", "must be a valid environment variable name")
    raw = {camel_to_snake(k): _snake_keys(spec[k]) for k in _SETTINGS if k in spec}
    try:
        settings = apply_settings(raw)
    except SettingsError as exc:
        f.fail("spec." + ".".join(snake_to_camel(part) for part in exc.field.split(".")), exc.message)
    deployment = BatchDeployment(
        name=name, endpoint_name=endpoint_name, code=code_uri, scoring_script=script, model_path=model_uri,
        environment=dict(f.mapping(spec.get("environment"), "spec.environment")), environment_variables=env_vars,
        settings=settings, description=str(spec.get("description") or ""),
        tags=f.string_map(spec.get("tags"), "spec.tags"))
    return BatchDeploymentSource(deployment, code_uri, model_uri)


def _uri(f: ResourceFields, value, path: str) -> str:
    text = f.string(value, path)
    if not text.startswith(_URI_SCHEMES):
        f.fail(path, f"must be an http(s):// or file:// URI on a cluster, got {text!r}")
    return text


def _snake_keys(value):
    return {camel_to_snake(k): v for k, v in value.items()} if isinstance(value, dict) else value
