"""Batch endpoint / deployment YAML → BatchEndpoint / BatchDeployment.

Recognised by Azure ML's `$schema` URLs (batchEndpoint, batchDeployment,
modelBatchDeployment) or by `kind: batch` at the top. Settings may be flat (the older
schema) or under `settings:` (the newer one), `instance_count` flat or under
`resources:`. Errors are serving.manifests.ManifestError naming the file and the field;
unknown fields are refused, Azure ML fields that mean nothing here are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifests.fields import FieldReader
from ..manifests import Document, ManifestError
from ..online_rules import valid_env_var_name
from .resources import BatchDeployment, BatchEndpoint, BatchSettings
from .settings import SETTING_NAMES, SettingsError, apply_settings

AUTH_MODES = ("key", "none")
_IGNORED = {"$schema", "kind", "properties", "identity", "id", "location", "compute", "type"}
_ENDPOINT_FIELDS = {"name", "auth_mode", "defaults", "description", "tags"}
_DEPLOYMENT_FIELDS = {"name", "endpoint_name", "model", "code_configuration", "environment",
                      "environment_variables", "resources", "settings", "description", "tags",
                      *SETTING_NAMES}


def _body(doc: Document | dict) -> dict:
    return doc.body if isinstance(doc, Document) else doc


def is_batch(doc: Document | dict) -> bool:
    """True for a batch endpoint or deployment document (by `$schema` or `kind: batch`)."""
    body = _body(doc)
    if not isinstance(body, dict):
        return False
    schema = str(body.get("$schema", "")).lower()
    return ("batchendpoint" in schema or "batchdeployment" in schema
            or str(body.get("kind", "")).lower() == "batch")


def _is_deployment(body: dict) -> bool:
    schema = str(body.get("$schema", "")).lower()
    if "batchdeployment" in schema:
        return True
    return "batchendpoint" not in schema and "endpoint_name" in body


class _Reader(FieldReader):
    """The shared FieldReader, with batch's own rules for top-level fields and paths."""

    def check_fields(self, body: dict, allowed: set[str], prefix: str = "", ignored=None) -> None:
        super().check_fields(body, allowed, prefix, ignored=set() if prefix else _IGNORED)

    def path(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if text.startswith("azureml:"):
            self.fail(field, "registered assets (azureml:...) are not available here; give a local path")
        return super().path(text, field)

    def tags(self, value: Any) -> dict[str, str]:
        return self.strings(value, "tags")


def parse_batch(doc: Document) -> BatchEndpoint | BatchDeployment:
    """Parse one batch document; raises ManifestError naming the file and the field."""
    if not isinstance(doc.body, dict):
        raise ManifestError(doc.source, None, "a resource must be a YAML mapping")
    if _is_deployment(doc.body):
        return _parse_deployment(doc)
    return _parse_endpoint(doc)


def _parse_endpoint(doc: Document) -> BatchEndpoint:
    r, body = _Reader(doc), doc.body
    r.check_fields(body, _ENDPOINT_FIELDS)
    name = r.name(body.get("name"), "name")
    auth_mode = body.get("auth_mode", "key")
    if auth_mode not in AUTH_MODES:
        hint = " (Azure ML's aad_token is not available here)" if auth_mode == "aad_token" else ""
        r.fail("auth_mode", f"must be one of {', '.join(AUTH_MODES)}, got {auth_mode!r}{hint}")
    default = r.default_deployment(body.get("defaults"), "defaults")
    return BatchEndpoint(name=name, auth_mode=auth_mode, default_deployment=default,
                         description=str(body.get("description") or ""), tags=r.tags(body.get("tags")))


def _parse_deployment(doc: Document) -> BatchDeployment:
    r, body = _Reader(doc), doc.body
    r.check_fields(body, _DEPLOYMENT_FIELDS)
    if str(body.get("type", "model")).lower() != "model":
        r.fail("type", f"only model batch deployments are supported, got {body.get('type')!r}")
    name = r.name(body.get("name"), "name")
    endpoint_name = r.name(body.get("endpoint_name"), "endpoint_name")

    model, model_path = body.get("model"), None
    if isinstance(model, str):
        model_path = r.path(model, "model")
    elif model is not None:
        model_body = r.mapping(model, "model")
        r.check_fields(model_body, {"name", "version", "path", "description", "type"}, "model.")
        if "path" in model_body:
            model_path = r.path(model_body["path"], "model.path")

    code_body = r.mapping(body.get("code_configuration"), "code_configuration")
    if not code_body:
        r.fail("code_configuration", "is required (code and scoring_script)")
    r.check_fields(code_body, {"code", "scoring_script"}, "code_configuration.")
    code = r.path(code_body.get("code"), "code_configuration.code")
    script = r.string(code_body.get("scoring_script"), "code_configuration.scoring_script")
    if not (Path(code) / script).is_file():
        r.fail("code_configuration.scoring_script", f"{script} is not a file in {code}")

    environment = body.get("environment") or {}
    if isinstance(environment, str):
        environment = {"name": environment}
    environment = r.mapping(environment, "environment")
    env_vars = {}
    nested = r.mapping(body.get("settings"), "settings")
    for field in ("environment_variables", "settings.environment_variables"):
        source = body if field == "environment_variables" else nested
        for key, value in r.string_map(source.get("environment_variables"), field).items():
            if not valid_env_var_name(key):
                r.fail(f"{field}.{key}", "must be a valid environment variable name")
            env_vars[key] = value

    return BatchDeployment(
        name=name, endpoint_name=endpoint_name, code=code, scoring_script=script, model_path=model_path,
        environment=environment, environment_variables=env_vars, settings=_settings(r, body),
        description=str(body.get("description") or ""), tags=r.tags(body.get("tags")))


def _settings(r: _Reader, body: dict) -> BatchSettings:
    flat = {k: body[k] for k in SETTING_NAMES if k in body}
    nested = {k: v for k, v in r.mapping(body.get("settings"), "settings").items()
              if k != "environment_variables"}
    resources = r.mapping(body.get("resources"), "resources")
    r.check_fields(resources, {"instance_count", "instance_type", "properties"}, "resources.")
    if "instance_count" in resources:
        if "instance_count" in flat:
            r.fail("resources.instance_count", "instance_count is also given at the top level; keep one")
        flat["instance_count"] = resources["instance_count"]
    for key in nested:
        if key in flat:
            r.fail(f"settings.{key}", f"{key} is also given at the top level; keep one")
    try:
        settings = apply_settings(flat)
        return apply_settings(nested, settings, prefix="settings.")
    except SettingsError as exc:
        field = exc.field
        if field == "instance_count" and "instance_count" in resources:
            field = "resources.instance_count"
        raise ManifestError(r.doc.source, field, exc.message) from None


def parse_batch_all(documents: list[Document], existing_endpoints: set[str],
                    existing_deployments: set[tuple[str, str]],
                    ) -> tuple[list[BatchEndpoint], list[BatchDeployment]]:
    """Parse batch documents applied together and check that they refer to each other.

    A deployment needs its batch endpoint (existing or in the same set); an endpoint's
    defaults.deployment_name must name a deployment of it (existing or in the same set).
    `existing_*` are what the BatchService holds (endpoint_names(), deployment_keys()).
    """
    endpoints: list[tuple[Document, BatchEndpoint]] = []
    deployments: list[tuple[Document, BatchDeployment]] = []
    seen: dict[tuple, str] = {}
    for doc in documents:
        resource = parse_batch(doc)
        if isinstance(resource, BatchEndpoint):
            key: tuple = ("batch endpoint", resource.name)
            endpoints.append((doc, resource))
        else:
            key = ("batch deployment", resource.endpoint_name, resource.name)
            deployments.append((doc, resource))
        if key in seen:
            raise ManifestError(doc.source, "name", f"{key[0]} '{resource.name}' is also defined in {seen[key]}")
        seen[key] = doc.source
    names = existing_endpoints | {e.name for _, e in endpoints}
    keys = existing_deployments | {(d.endpoint_name, d.name) for _, d in deployments}
    for doc, deployment in deployments:
        if deployment.endpoint_name not in names:
            raise ManifestError(doc.source, "endpoint_name",
                                f"no batch endpoint '{deployment.endpoint_name}' (apply the endpoint too)")
    for doc, endpoint in endpoints:
        if endpoint.default_deployment and (endpoint.name, endpoint.default_deployment) not in keys:
            raise ManifestError(doc.source, "defaults.deployment_name",
                                f"batch endpoint '{endpoint.name}' has no deployment '{endpoint.default_deployment}'")
    return [e for _, e in endpoints], [d for _, d in deployments]
