"""The rules an online endpoint or deployment must keep, written once for every way in.

YAML manifests (serving/manifests/online.py) and Kubernetes custom resources
(serving/backends/kubernetes/translation.py) read fields in their own case and check
their types; then both ask here what is wrong with what they built, so a rule added
for one is in force for the other. Field paths are spelled by `case` (snake_case as is,
or e.g. camelCase) — only field names, never a key the user chose (a deployment in
`traffic`, a variable in `environment_variables`).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, NamedTuple

from .resources import Deployment, Endpoint, ProbeSettings

AUTH_MODES = ("key", "aml_token", "none")
SCALE_TYPES = ("default", "target_utilization")
# The fields of scale_settings that only type target_utilization has (Azure ML's schema:
# DefaultScaleSettings is `type` alone).
AUTOSCALE_FIELDS = ("min_instances", "max_instances", "target_utilization_percentage", "polling_interval")
MAX_MIRROR_PERCENT = 50
FULL_TRAFFIC = 100  # percent: one deployment's weight is at most this; live weights add up to it
MAX_INSTANCE_COUNT = 64  # replicas an online deployment may ask for (YAML, CRs, `deployment scale`)
MIN_PORT, MAX_PORT = 1, 65535  # an inference_config route's port
ROUTES = ("liveness_route", "readiness_route", "scoring_route")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")

Case = Callable[[str], str]


class Problem(NamedTuple):
    """One broken rule: the field's dotted path (in the caller's case) and what is wrong."""

    field: str
    message: str


def valid_env_var_name(name: object) -> bool:
    """A name a process environment takes as is (batch deployments keep this rule too)."""
    return isinstance(name, str) and bool(_ENV_VAR.match(name))


def _as_is(name: str) -> str:
    return name


def _path(case: Case, *names: str, key: str | None = None) -> str:
    parts = [case(name) for name in names]
    return ".".join(parts if key is None else [*parts, key])


def endpoint_problems(endpoint: Endpoint, case: Case = _as_is) -> Iterator[Problem]:
    """What is wrong with the endpoint, in the order a reader should see it."""
    if endpoint.auth_mode not in AUTH_MODES:
        yield Problem(_path(case, "auth_mode"),
                      f"must be one of {', '.join(AUTH_MODES)}, got {endpoint.auth_mode!r}")
    total = sum(endpoint.traffic.values())
    if total not in (0, FULL_TRAFFIC):
        yield Problem(_path(case, "traffic"), f"weights must add up to {FULL_TRAFFIC} (or all be 0), got {total}")
    mirror = endpoint.mirror_traffic
    if len(mirror) > 1:
        yield Problem(_path(case, "mirror_traffic"), "only one deployment can receive mirrored traffic")
    for target, percent in mirror.items():
        if percent > MAX_MIRROR_PERCENT:
            yield Problem(_path(case, "mirror_traffic", key=target),
                          f"at most {MAX_MIRROR_PERCENT} percent can be mirrored, got {percent}")
        if endpoint.traffic.get(target, 0) > 0:
            yield Problem(_path(case, "mirror_traffic", key=target),
                          "a deployment cannot get both live and mirrored traffic")


def deployment_problems(deployment: Deployment, case: Case = _as_is) -> Iterator[Problem]:
    """What is wrong with the deployment, in the order a reader should see it."""
    yield from _code_problems(deployment, case)
    yield from _route_problems(deployment.environment, case)
    for name in deployment.environment_variables:
        if not valid_env_var_name(name):
            yield Problem(_path(case, "environment_variables", key=str(name)),
                          "must be a valid environment variable name")
    yield from _request_problems(deployment, case)
    yield from _scale_problems(deployment, case)
    for field_name in ("liveness_probe", "readiness_probe"):
        yield from _probe_problems(getattr(deployment, field_name), field_name, case)


def _code_problems(deployment: Deployment, case: Case) -> Iterator[Problem]:
    script = deployment.scoring_script
    if script is not None and (script.startswith("/") or ".." in script.split("/")):
        yield Problem(_path(case, "code_configuration", "scoring_script"), "must be a path inside the code folder")


def _route_problems(environment: dict, case: Case) -> Iterator[Problem]:
    routes = environment.get("inference_config")
    if not isinstance(routes, dict):
        return
    for route in ROUTES:
        path = (routes.get(route) or {}).get("path")
        if isinstance(path, str) and not path.startswith("/"):
            yield Problem(_path(case, "environment", "inference_config", route, "path"),
                          f"must start with '/', got {path!r}")


def _request_problems(deployment: Deployment, case: Case) -> Iterator[Problem]:
    settings = deployment.request_settings
    for name in ("max_concurrent_requests_per_instance", "request_timeout_ms"):
        value = getattr(settings, name)
        if value < 1:
            yield Problem(_path(case, "request_settings", name), f"must be at least 1, got {value}")


def _scale_problems(deployment: Deployment, case: Case) -> Iterator[Problem]:
    scale = deployment.scale_settings
    if scale.type not in SCALE_TYPES:
        yield Problem(_path(case, "scale_settings", "type"),
                      f"must be default or target_utilization, got {scale.type!r}")
    if scale.type != "target_utilization":
        return  # the other numbers only matter to the autoscaler
    if scale.min_instances < 1:
        # No scale to zero: a request that finds no ready replica is refused at once (503),
        # so it is no load the autoscaler could see, and nothing would bring a replica back.
        yield Problem(_path(case, "scale_settings", "min_instances"),
                      f"must be at least 1, got {scale.min_instances} (scoregate does not scale to zero)")
    if scale.min_instances > scale.max_instances:
        yield Problem(_path(case, "scale_settings", "min_instances"), f"must not exceed {case('max_instances')}")
    if not 1 <= scale.target_utilization_percentage <= 100:
        yield Problem(_path(case, "scale_settings", "target_utilization_percentage"), "must be from 1 to 100")
    if scale.polling_interval < 0.1:
        yield Problem(_path(case, "scale_settings", "polling_interval"), "must be at least 0.1 seconds")


def default_scale_problems(given: Iterable[str], scale_type: str, case: Case = _as_is) -> Iterator[Problem]:
    """Fields given in a `scale_settings` of type default (the type when none is given)
    that belong to target_utilization: the autoscaler would never read them, so the
    replicas would silently stay at instance_count. Only YAML asks this: a custom resource
    written by the cluster store carries every field of ScaleSettings whatever its type."""
    if scale_type != "default":
        return
    present = set(given)
    for name in AUTOSCALE_FIELDS:
        if case(name) in present:
            yield Problem(_path(case, "scale_settings", name),
                          f"belongs to scale settings of type: target_utilization (the autoscaler's);"
                          f" default scale settings have only 'type' — set type: target_utilization"
                          f" to autoscale, or remove {case(name)} and size the deployment with"
                          f" {case('instance_count')}")


def _probe_problems(probe: ProbeSettings, field_name: str, case: Case) -> Iterator[Problem]:
    for name in ("period", "timeout"):
        value = getattr(probe, name)
        if value <= 0:
            yield Problem(_path(case, field_name, name), f"must be above 0, got {value}")
    for name in ("success_threshold", "failure_threshold"):
        value = getattr(probe, name)
        if value < 1:
            yield Problem(_path(case, field_name, name), f"must be at least 1, got {value}")
