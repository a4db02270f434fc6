"""Desired-state resources, in the shape of Azure ML v2 YAML, as frozen dataclasses.

serving.manifests turns YAML into these (with validation); the store keeps them as
JSON via to_dict/from_dict; the controller and the publisher read them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterable

import orjson


@dataclass(frozen=True)
class RequestSettings:
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


@dataclass(frozen=True)
class ProbeSettings:
    """Azure ML's probe fields (seconds, counts).

    Defaults differ from Azure ML's (10 s initial delay, 10 s period) on purpose: a
    scoregate replica opens its port only after init() returned, so probing can start
    at once and often without cost; a replica still initializing (port closed) is not
    a failed probe.
    """

    initial_delay: float = 0
    period: float = 1
    timeout: float = 2
    success_threshold: int = 1
    failure_threshold: int = 30


@dataclass(frozen=True)
class ScaleSettings:
    type: str = "default"  # default | target_utilization
    min_instances: int = 1
    max_instances: int = 1
    target_utilization_percentage: int = 70
    polling_interval: float = 1  # seconds; fractions allowed (a scoregate extension)


@dataclass(frozen=True)
class Endpoint:
    name: str
    auth_mode: str = "key"
    traffic: dict[str, int] = field(default_factory=dict)
    mirror_traffic: dict[str, int] = field(default_factory=dict)
    # scoregate extension: {"requests_per_second": float, "burst": int}
    rate_limit: dict | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Endpoint":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


DEFAULT_INSTANCE_TYPE = "defaultinstancetype"


@dataclass(frozen=True)
class InstanceType:
    """A named size for replicas, as Azure ML's InstanceType custom resource has it.

    `requests`/`limits` use Kubernetes quantities (cpu "500m", "2"; memory "2Gi").
    Locally, limits.memory caps each replica's address space and limits.cpu pins it to
    that many cores; on Kubernetes they become the pod's resources and nodeSelector.
    """

    name: str
    node_selector: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "InstanceType":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# Azure ML's default instance type for Kubernetes compute.
DEFAULT_INSTANCE = InstanceType(DEFAULT_INSTANCE_TYPE, requests={"cpu": "100m", "memory": "2Gi"},
                                limits={"cpu": "2", "memory": "2Gi"})


def parse_cpu(quantity: str) -> float:
    """Kubernetes CPU quantity → cores ("500m" → 0.5, "2" → 2.0)."""
    text = str(quantity).strip()
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    if value <= 0:
        raise ValueError(f"CPU quantity must be positive, got {quantity!r}")
    return value


_MEMORY_UNITS = {"Ki": 1024, "Mi": 1024 ** 2, "Gi": 1024 ** 3, "Ti": 1024 ** 4,
                 "k": 1000, "K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}


def parse_memory(quantity: str) -> int:
    """Kubernetes memory quantity → bytes ("2Gi" → 2147483648, "512M", "1000")."""
    text = str(quantity).strip()
    for suffix in sorted(_MEMORY_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            value = float(text[: -len(suffix)]) * _MEMORY_UNITS[suffix]
            break
    else:
        value = float(text)
    if value <= 0:
        raise ValueError(f"memory quantity must be positive, got {quantity!r}")
    return int(value)


@dataclass(frozen=True)
class Deployment:
    name: str
    endpoint_name: str
    code: str | None = None  # absolute folder
    scoring_script: str | None = None
    model_path: str | None = None  # absolute folder or file, or an http(s):// URI
    model_sha256: str | None = None  # checked after a download (scoregate extension)
    environment: dict = field(default_factory=dict)
    environment_variables: dict[str, str] = field(default_factory=dict)
    instance_type: str = "defaultinstancetype"
    instance_count: int = 1
    request_settings: RequestSettings = field(default_factory=RequestSettings)
    scale_settings: ScaleSettings = field(default_factory=ScaleSettings)
    liveness_probe: ProbeSettings = field(default_factory=ProbeSettings)
    readiness_probe: ProbeSettings = field(default_factory=ProbeSettings)
    # Time budget of a rollout of this deployment; None: the gateway's (20 min).
    rollout_timeout_s: float | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    # The local code folder's and model's files (names, sizes, modification times) when the
    # YAML was applied: part of the version, so re-applying after an edit in place (a fixed
    # score.py, a retrained model) rolls it out, as Azure ML uploads a changed folder as a
    # new version. None: not taken (custom resources name images and URIs instead).
    content_digest: str | None = None
    # What `instance_type` named when the store read this deployment (with_instance_type):
    # part of the version, so editing an InstanceType rolls the deployments that use it,
    # and kept with the last good version, so a rollback runs the old resources again.
    # None: not resolved (the named type does not exist, or nobody resolved it). Left out
    # of == (which compares what was applied); replica_spec_hash() compares versions.
    resolved_instance_type: InstanceType | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Deployment":
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key, kind in (("request_settings", RequestSettings), ("scale_settings", ScaleSettings),
                          ("liveness_probe", ProbeSettings), ("readiness_probe", ProbeSettings)):
            if isinstance(values.get(key), dict):
                values[key] = kind(**values[key])
        if isinstance(values.get("resolved_instance_type"), dict):
            values["resolved_instance_type"] = InstanceType.from_dict(values["resolved_instance_type"])
        return cls(**values)

    def replica_spec_hash(self) -> str:
        """Fingerprint of what a running replica is made from.

        Replicas whose hash differs from the desired one are replaced; a change of
        instance_count or scale settings alone does not restart anything. A resolved
        instance type counts with its content (node selector, requests, limits), so an
        edited InstanceType is a new version; unresolved, only its name counts.
        """
        resolved = self.resolved_instance_type
        relevant = {
            "code": self.code,
            "scoring_script": self.scoring_script,
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "environment": self.environment,
            "environment_variables": self.environment_variables,
            "instance_type": self.instance_type if resolved is None else _content(resolved),
            "probes": [asdict(self.liveness_probe), asdict(self.readiness_probe)],
        }
        if self.content_digest is not None:
            relevant["content"] = self.content_digest
        return hashlib.sha256(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _content(instance_type: InstanceType) -> dict:
    return {"name": instance_type.name, "node_selector": dict(instance_type.node_selector),
            "requests": dict(instance_type.requests), "limits": dict(instance_type.limits)}


def with_instance_type(deployment: Deployment, instance_types: Iterable[InstanceType]) -> Deployment:
    """The deployment with `resolved_instance_type` set from the current instance types.

    Stores call this on every read, so the controller's version hash and every view see
    the content the type has now. Azure ML's default applies when no type named
    defaultinstancetype exists; a type that does not exist resolves to None (the rollout
    then fails in its environment stage, naming it).
    """
    known = {t.name: t for t in instance_types}
    found = known.get(deployment.instance_type)
    if found is None and deployment.instance_type == DEFAULT_INSTANCE_TYPE:
        found = DEFAULT_INSTANCE
    if found is not None and type(found) is not InstanceType:
        found = InstanceType(found.name, dict(found.node_selector), dict(found.requests), dict(found.limits))
    if found == deployment.resolved_instance_type:
        return deployment
    return replace(deployment, resolved_instance_type=found)
