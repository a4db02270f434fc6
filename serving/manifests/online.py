"""Azure ML v2 online endpoints and deployments → Endpoint / Deployment.

Relative paths (`model.path`, `code_configuration.code`) resolve against the YAML
file's folder. Fields Azure ML has but scoregate does not use are accepted and ignored
(apply's result names them); unknown fields are refused, so a typo never passes silently. This module reads fields
and checks their types; the rules shared with Kubernetes custom resources (weights,
mirroring, settings, probes, ...) are serving/online_rules.py's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

from ..online_rules import (MAX_INSTANCE_COUNT, MAX_PORT, MIN_PORT, ROUTES, default_scale_problems,
                            deployment_problems, endpoint_problems)
from ..resources import (DEFAULT_INSTANCE_TYPE, Deployment, Endpoint, ProbeSettings, RequestSettings,
                         ScaleSettings)
from .documents import Document, ManifestError
from .fields import FieldReader

INFERENCE_SERVERS = ("scoregate", "azmlinfsrv")

# Public: `endpoint update` sends an endpoint back as a document of exactly these fields.
ENDPOINT_FIELDS = ("name", "auth_mode", "traffic", "mirror_traffic", "rate_limit", "description", "tags")
# What an endpoint document that leaves them out keeps from the stored endpoint: applying
# `name` + `auth_mode` again must not take the traffic away from every deployment.
KEPT_FIELDS = ("traffic", "mirror_traffic")
_DEPLOYMENT_FIELDS = {"name", "endpoint_name", "model", "code_configuration", "environment",
                      "environment_variables", "instance_type", "instance_count",
                      "request_settings", "scale_settings", "liveness_probe", "readiness_probe",
                      "rollout_timeout_s", "description", "tags"}
# Fields only a deployment has: a document with one is a deployment, even one that
# forgot endpoint_name (which is then what it is told, not "model: unknown field").
DEPLOYMENT_ONLY = frozenset(_DEPLOYMENT_FIELDS - set(ENDPOINT_FIELDS))
_ENVIRONMENT_FIELDS = {"name", "version", "image", "conda_file", "build", "description", "tags",
                       "os_type", "inference_config", "command", "inference_server"}
_PROBE_NUMBERS = ("initial_delay", "period", "timeout")


def parse_endpoint(doc: Document, current: Endpoint | None = None, ignored: list[str] | None = None) -> Endpoint:
    """`current`: the endpoint as stored, whose splits a document that leaves `traffic`
    or `mirror_traffic` out keeps (KEPT_FIELDS); `ignored` gets the Azure ML fields
    accepted and not used."""
    r, body = FieldReader(doc, ignored), doc.body
    r.check_fields(body, set(ENDPOINT_FIELDS))
    name = r.name(body.get("name"), "name")
    # Left out, the stored mode stays: a re-apply never changes how callers authenticate
    # unless it says so (an aml_token endpoint went back to keys). A new endpoint: key.
    auth_mode = body.get("auth_mode", current.auth_mode if current is not None else "key")
    traffic, mirror = (_split(r, body, field_name, current) for field_name in KEPT_FIELDS)
    rate_limit = None
    if body.get("rate_limit") is not None:
        limit = r.mapping(body["rate_limit"], "rate_limit")
        r.check_fields(limit, {"requests_per_second", "burst"}, "rate_limit.")
        rps = r.number(limit.get("requests_per_second"), "rate_limit.requests_per_second", 0.001)
        burst = r.integer(limit.get("burst", max(1, int(rps))), "rate_limit.burst", 1)
        rate_limit = {"requests_per_second": float(rps), "burst": burst}
    endpoint = Endpoint(name=name, auth_mode=auth_mode, traffic=traffic, mirror_traffic=mirror,
                        rate_limit=rate_limit, description=str(body.get("description") or ""),
                        tags=r.strings(body.get("tags"), "tags"))
    r.check(endpoint_problems(endpoint))
    return endpoint


def kept_fields(doc: Document, current: Endpoint | None) -> list[str]:
    """The splits an endpoint document takes from the stored endpoint (it leaves them out)."""
    return [] if current is None else [f for f in KEPT_FIELDS if f not in doc.body]


def _split(r: FieldReader, body: dict, field_name: str, current: Endpoint | None) -> dict[str, int]:
    """A split as written (`traffic: {}` clears it), or left out: the current one, as
    `az ml online-endpoint update -f` keeps it; a new endpoint starts with none."""
    if field_name in body or current is None:
        return r.weights(body.get(field_name), field_name)
    return dict(getattr(current, field_name))


def parse_deployment(doc: Document, ignored: list[str] | None = None) -> Deployment:
    """`ignored` gets the Azure ML fields accepted and not used."""
    r, body = FieldReader(doc, ignored), doc.body
    r.check_fields(body, _DEPLOYMENT_FIELDS)
    name = r.name(body.get("name"), "name")
    if body.get("endpoint_name") is None:
        raise ManifestError(doc.source, None, "endpoint_name is required: a deployment names its endpoint")
    endpoint_name = r.name(body["endpoint_name"], "endpoint_name")
    model_path, model_sha256 = _model(r, body.get("model"))
    environment = _environment(r, body.get("environment"))

    code_body = r.mapping(body.get("code_configuration"), "code_configuration")
    r.check_fields(code_body, {"code", "scoring_script"}, "code_configuration.")
    code = scoring_script = None
    if code_body:
        code = r.path(code_body.get("code"), "code_configuration.code")
        scoring_script = r.string(code_body.get("scoring_script"), "code_configuration.scoring_script")
        if not (Path(code) / scoring_script).is_file():
            r.fail("code_configuration.scoring_script", f"{scoring_script} is not a file in {code}")
    elif "command" not in environment:
        r.fail("code_configuration", "is required (code and scoring_script), unless environment.command "
               "starts a model server of your own")

    env_vars = r.string_map(body.get("environment_variables"), "environment_variables")

    instance_type = r.string(body.get("instance_type", DEFAULT_INSTANCE_TYPE), "instance_type")
    instance_count = r.integer(body.get("instance_count", 1), "instance_count", 0, MAX_INSTANCE_COUNT)
    request_settings = r.settings(RequestSettings, body.get("request_settings"), "request_settings")
    scale = r.settings(ScaleSettings, body.get("scale_settings"), "scale_settings", numbers=("polling_interval",))
    r.check(default_scale_problems(r.mapping(body.get("scale_settings"), "scale_settings"), scale.type))
    probes = [r.settings(ProbeSettings, body.get(field_name), field_name, numbers=_PROBE_NUMBERS)
              for field_name in ("liveness_probe", "readiness_probe")]
    rollout_timeout_s = None
    if body.get("rollout_timeout_s") is not None:
        rollout_timeout_s = r.number(body["rollout_timeout_s"], "rollout_timeout_s", 1)
    deployment = Deployment(
        name=name, endpoint_name=endpoint_name, code=code, scoring_script=scoring_script,
        model_path=model_path, model_sha256=model_sha256, environment=environment,
        environment_variables=env_vars, instance_type=instance_type, instance_count=instance_count,
        request_settings=request_settings, scale_settings=scale, liveness_probe=probes[0],
        readiness_probe=probes[1], rollout_timeout_s=rollout_timeout_s,
        description=str(body.get("description") or ""), tags=r.strings(body.get("tags"), "tags"),
        content_digest=_content_digest(code, model_path),
    )
    r.check(deployment_problems(deployment))
    return deployment


def _content_digest(*paths: str | None) -> str:
    """Names, sizes and modification times of the files under local paths, but not in
    __pycache__ (the replica's own import writes there) nor in hidden folders (.git, a
    state dir .scoregate whose logs grow when code is the folder scoregate serves from)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None or path.startswith(("http://", "https://")):
            continue
        if os.path.isfile(path):
            files = [path]
        else:
            files = []
            for folder, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                files += [os.path.join(folder, name) for name in sorted(names)]
        for file in files:
            try:
                stat = os.stat(file)
            except OSError:
                continue
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _model(r: FieldReader, model) -> tuple[str | None, str | None]:
    if model is None:
        return None, None
    if isinstance(model, str):
        if model.startswith("azureml:"):
            r.fail("model", "registered models (azureml:...) are not available here; give model.path")
        return r.path(model, "model", allow_http=True), None
    body = r.mapping(model, "model")
    r.check_fields(body, {"name", "version", "path", "description", "type", "sha256"}, "model.")
    path = r.path(body["path"], "model.path", allow_http=True) if "path" in body else None
    sha256 = body.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        r.fail("model.sha256", "must be 64 hexadecimal digits")
    return path, sha256.lower() if sha256 else None


def _environment(r: FieldReader, value) -> dict:
    """Environment: the local backend reads `command`, `inference_config` and
    `inference_server`; the Kubernetes backend reads `image` and `inference_config`."""
    if isinstance(value, str):
        return {"name": value}
    env = dict(r.mapping(value, "environment"))
    r.check_fields(env, _ENVIRONMENT_FIELDS, "environment.", ignored=set())
    if "command" in env:
        command = env["command"]
        if isinstance(command, str):
            command = shlex.split(command)
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
            r.fail("environment.command", "must be a command line (a string or a list of strings)")
        env["command"] = command
    if "inference_server" in env and env["inference_server"] not in INFERENCE_SERVERS:
        r.fail("environment.inference_server", f"must be one of {', '.join(INFERENCE_SERVERS)}")
    if "inference_config" in env:
        config = r.mapping(env["inference_config"], "environment.inference_config")
        r.check_fields(config, set(ROUTES), "environment.inference_config.", ignored=set())
        for route in ROUTES:
            if route in config:
                field = f"environment.inference_config.{route}"
                entry = r.mapping(config[route], field)
                r.check_fields(entry, {"port", "path"}, f"{field}.", ignored=set())
                r.string(entry.get("path"), f"{field}.path")
                if "port" in entry:
                    r.integer(entry["port"], f"{field}.port", MIN_PORT, MAX_PORT)
    return env
