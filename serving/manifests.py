"""YAML → resources, with errors that name the file and the field.

Accepts Azure ML v2 online endpoint and deployment YAML (recognised by `$schema`, or a
deployment by its `endpoint_name`). Relative paths (`model.path`,
`code_configuration.code`) are resolved against the YAML file's folder. Fields Azure ML
has but scoregate does not use are accepted and ignored; unknown fields are refused, so
a typo never passes silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from .resources import Deployment, Endpoint, ProbeSettings, RequestSettings, ScaleSettings

NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")
AUTH_MODES = ("key", "none")

_AML_IGNORED = {"$schema", "properties", "identity", "public_network_access", "kind",
                "app_insights_enabled", "egress_public_network_access", "data_collector",
                "compute", "location", "id", "type", "with_credential"}
_ENDPOINT_FIELDS = {"name", "auth_mode", "traffic", "mirror_traffic", "rate_limit", "description", "tags"}
_DEPLOYMENT_FIELDS = {"name", "endpoint_name", "model", "code_configuration", "environment",
                      "environment_variables", "instance_type", "instance_count",
                      "request_settings", "scale_settings", "liveness_probe", "readiness_probe",
                      "description", "tags"}


class ManifestError(ValueError):
    """A resource file that cannot be applied; str() names the file and the field."""

    def __init__(self, source: str, field: str | None, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Document:
    """One YAML document and where it came from (relative paths resolve against base_dir)."""

    source: str
    base_dir: str
    body: dict


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Read every *.yml / *.yaml file named, or found (recursively) under a folder."""
    documents: list[Document] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
            if not files:
                raise ManifestError(str(path), None, "no .yml or .yaml file in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise ManifestError(str(path), None, "no such file or folder")
        for file in files:
            documents.extend(_read_file(file))
    return documents


def _read_file(file: Path) -> list[Document]:
    try:
        loaded = list(yaml.safe_load_all(file.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise ManifestError(str(file), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(file), None, f"cannot read: {exc}") from None
    out = []
    for body in loaded:
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ManifestError(str(file), None, "a resource must be a YAML mapping")
        out.append(Document(str(file), str(file.resolve().parent), body))
    return out


def kind_of(doc: Document) -> str:
    schema = str(doc.body.get("$schema", "")).lower()
    if "batch" in schema or str(doc.body.get("kind", "")).lower() == "batch":
        raise ManifestError(doc.source, "$schema", "batch endpoints and deployments are not supported yet")
    if "onlinedeployment" in schema or "endpoint_name" in doc.body:
        return "deployment"
    if "onlineendpoint" in schema or "name" in doc.body:
        return "endpoint"
    raise ManifestError(doc.source, None, "cannot tell the resource kind: set $schema or name")


def parse(doc: Document) -> Endpoint | Deployment:
    kind = kind_of(doc)
    return parse_endpoint(doc) if kind == "endpoint" else parse_deployment(doc)


# -- field readers: each names the field it complains about --------------------------

class _Reader:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def fail(self, field: str, message: str):
        raise ManifestError(self.doc.source, field, message)

    def check_fields(self, body: dict, allowed: set[str], prefix: str = "") -> None:
        for key in body:
            if key not in allowed and key not in _AML_IGNORED:
                self.fail(prefix + str(key), f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not NAME_RULE.match(value):
            self.fail(field, f"must be 2-32 letters, digits or '-', starting with a letter; got {value!r}")
        return value

    def integer(self, value: Any, field: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            self.fail(field, f"must be at least {minimum}{upper}, got {value}")
        return value

    def mapping(self, value: Any, field: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, got {type(value).__name__}")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, f"must be a non-empty string, got {value!r}")
        return value

    def path(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if "://" in text and not text.startswith("file://"):
            self.fail(field, "only local paths and file:// URIs are supported yet")
        text = text.removeprefix("file://")
        resolved = (Path(self.doc.base_dir) / text).resolve()
        if not resolved.exists():
            self.fail(field, f"{text} does not exist (resolved to {resolved})")
        return str(resolved)

    def weights(self, value: Any, field: str) -> dict[str, int]:
        table = self.mapping(value, field)
        out = {}
        for key, weight in table.items():
            self.name(key, f"{field}.{key}")
            out[key] = self.integer(weight, f"{field}.{key}", 0, 100)
        return out

    def dataclass_from(self, kind, value: Any, field: str):
        body = self.mapping(value, field)
        names = {f.name for f in fields(kind)}
        self.check_fields(body, names, prefix=f"{field}.")
        values = {}
        for key, raw in body.items():
            if key in names:
                if key == "type":
                    values[key] = self.string(raw, f"{field}.{key}")
                elif key == "polling_interval":
                    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0.1:
                        self.fail(f"{field}.{key}", f"must be a number of seconds ≥ 0.1, got {raw!r}")
                    values[key] = raw
                else:
                    values[key] = self.integer(raw, f"{field}.{key}", 0)
        return kind(**values)


def parse_endpoint(doc: Document) -> Endpoint:
    r, body = _Reader(doc), doc.body
    r.check_fields(body, _ENDPOINT_FIELDS)
    name = r.name(body.get("name"), "name")
    auth_mode = body.get("auth_mode", "key")
    if auth_mode not in AUTH_MODES:
        r.fail("auth_mode", f"must be one of {', '.join(AUTH_MODES)}, got {auth_mode!r}"
               + (" (aml_token is not supported yet)" if auth_mode == "aml_token" else ""))
    traffic = r.weights(body.get("traffic"), "traffic")
    total = sum(traffic.values())
    if total not in (0, 100):
        r.fail("traffic", f"weights must add up to 100 (or all be 0), got {total}")
    mirror = r.weights(body.get("mirror_traffic"), "mirror_traffic")
    if len(mirror) > 1:
        r.fail("mirror_traffic", "only one deployment can receive mirrored traffic")
    for target, percent in mirror.items():
        if percent > 50:
            r.fail(f"mirror_traffic.{target}", f"at most 50 percent can be mirrored, got {percent}")
        if traffic.get(target, 0) > 0:
            r.fail(f"mirror_traffic.{target}", "a deployment cannot get both live and mirrored traffic")
    rate_limit = None
    if body.get("rate_limit") is not None:
        limit = r.mapping(body["rate_limit"], "rate_limit")
        r.check_fields(limit, {"requests_per_second", "burst"}, "rate_limit.")
        rps = limit.get("requests_per_second")
        if isinstance(rps, bool) or not isinstance(rps, (int, float)) or rps <= 0:
            r.fail("rate_limit.requests_per_second", f"must be a number above 0, got {rps!r}")
        burst = r.integer(limit.get("burst", max(1, int(rps))), "rate_limit.burst", 1)
        rate_limit = {"requests_per_second": float(rps), "burst": burst}
    tags = {str(k): str(v) for k, v in r.mapping(body.get("tags"), "tags").items()}
    return Endpoint(name=name, auth_mode=auth_mode, traffic=traffic, mirror_traffic=mirror,
                    rate_limit=rate_limit, description=str(body.get("description") or ""), tags=tags)


def parse_deployment(doc: Document) -> Deployment:
    r, body = _Reader(doc), doc.body
    r.check_fields(body, _DEPLOYMENT_FIELDS)
    name = r.name(body.get("name"), "name")
    endpoint_name = r.name(body.get("endpoint_name"), "endpoint_name")

    model = body.get("model")
    model_path = None
    if isinstance(model, str):
        if model.startswith("azureml:"):
            r.fail("model", "registered models (azureml:...) are not available here; give model.path")
        model_path = r.path(model, "model")
    elif model is not None:
        model_body = r.mapping(model, "model")
        r.check_fields(model_body, {"name", "version", "path", "description", "type"}, "model.")
        if "path" in model_body:
            model_path = r.path(model_body["path"], "model.path")

    code_body = r.mapping(body.get("code_configuration"), "code_configuration")
    r.check_fields(code_body, {"code", "scoring_script"}, "code_configuration.")
    code = scoring_script = None
    if code_body:
        code = r.path(code_body.get("code"), "code_configuration.code")
        scoring_script = r.string(code_body.get("scoring_script"), "code_configuration.scoring_script")
        if not (Path(code) / scoring_script).is_file():
            r.fail("code_configuration.scoring_script", f"{scoring_script} is not a file in {code}")
    else:
        r.fail("code_configuration", "is required (code and scoring_script)")

    environment = body.get("environment") or {}
    if isinstance(environment, str):
        environment = {"name": environment}
    environment = r.mapping(environment, "environment")

    variables = r.mapping(body.get("environment_variables"), "environment_variables")
    env_vars = {}
    for key, value in variables.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            r.fail(f"environment_variables.{key}", "must be a valid environment variable name")
        env_vars[key] = str(value)

    instance_type = body.get("instance_type", "defaultinstancetype")
    r.string(instance_type, "instance_type")
    instance_count = r.integer(body.get("instance_count", 1), "instance_count", 0, 64)
    request_settings = r.dataclass_from(RequestSettings, body.get("request_settings"), "request_settings")
    if request_settings.max_concurrent_requests_per_instance < 1:
        r.fail("request_settings.max_concurrent_requests_per_instance", "must be at least 1")
    if request_settings.request_timeout_ms < 1:
        r.fail("request_settings.request_timeout_ms", "must be at least 1")
    scale_settings = r.dataclass_from(ScaleSettings, body.get("scale_settings"), "scale_settings")
    if scale_settings.type not in ("default", "target_utilization"):
        r.fail("scale_settings.type", f"must be default or target_utilization, got {scale_settings.type!r}")
    if scale_settings.type == "target_utilization":
        if scale_settings.min_instances > scale_settings.max_instances:
            r.fail("scale_settings.min_instances", "must not exceed max_instances")
        if not 1 <= scale_settings.target_utilization_percentage <= 100:
            r.fail("scale_settings.target_utilization_percentage", "must be from 1 to 100")
    liveness = r.dataclass_from(ProbeSettings, body.get("liveness_probe"), "liveness_probe")
    readiness = r.dataclass_from(ProbeSettings, body.get("readiness_probe"), "readiness_probe")
    tags = {str(k): str(v) for k, v in r.mapping(body.get("tags"), "tags").items()}
    return Deployment(
        name=name, endpoint_name=endpoint_name, code=code, scoring_script=scoring_script,
        model_path=model_path, environment=environment, environment_variables=env_vars,
        instance_type=instance_type, instance_count=instance_count,
        request_settings=request_settings, scale_settings=scale_settings,
        liveness_probe=liveness, readiness_probe=readiness,
        description=str(body.get("description") or ""), tags=tags,
    )


def parse_all(documents: list[Document], existing_endpoints: set[str],
              existing_deployments: set[tuple[str, str]]) -> tuple[list[Endpoint], list[Deployment]]:
    """Parse a set of documents applied together and check they refer to each other.

    A deployment needs its endpoint (existing or in the same set); traffic may only
    name deployments of that endpoint (existing or in the same set).
    """
    endpoints: list[tuple[Document, Endpoint]] = []
    deployments: list[tuple[Document, Deployment]] = []
    seen: dict[tuple, str] = {}
    for doc in documents:
        resource = parse(doc)
        key = ("endpoint", resource.name) if isinstance(resource, Endpoint) else \
            ("deployment", resource.endpoint_name, resource.name)
        if key in seen:
            raise ManifestError(doc.source, "name", f"{key[0]} '{resource.name}' is also defined in {seen[key]}")
        seen[key] = doc.source
        if isinstance(resource, Endpoint):
            endpoints.append((doc, resource))
        else:
            deployments.append((doc, resource))
    endpoint_names = existing_endpoints | {e.name for _, e in endpoints}
    deployment_keys = existing_deployments | {(d.endpoint_name, d.name) for _, d in deployments}
    for doc, deployment in deployments:
        if deployment.endpoint_name not in endpoint_names:
            raise ManifestError(doc.source, "endpoint_name",
                                f"no endpoint '{deployment.endpoint_name}' (apply the endpoint too)")
    for doc, endpoint in endpoints:
        for field_name, table in (("traffic", endpoint.traffic), ("mirror_traffic", endpoint.mirror_traffic)):
            for target in table:
                if (endpoint.name, target) not in deployment_keys:
                    raise ManifestError(doc.source, f"{field_name}.{target}",
                                        f"endpoint '{endpoint.name}' has no deployment '{target}'")
    return [e for _, e in endpoints], [d for _, d in deployments]
