"""Desired-state resources, in the shape of Azure ML v2 YAML, as frozen dataclasses.

serving.manifests turns YAML into these (with validation); the store keeps them as
JSON via to_dict/from_dict; the controller and the publisher read them.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields

import orjson


@dataclass(frozen=True)
class RequestSettings:
    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


@dataclass(frozen=True)
class ProbeSettings:
    """Azure ML's probe fields and defaults (seconds, counts)."""

    initial_delay: int = 10
    period: int = 10
    timeout: int = 2
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


@dataclass(frozen=True)
class Deployment:
    name: str
    endpoint_name: str
    code: str | None = None  # absolute folder
    scoring_script: str | None = None
    model_path: str | None = None  # absolute folder or file
    environment: dict = field(default_factory=dict)
    environment_variables: dict[str, str] = field(default_factory=dict)
    instance_type: str = "defaultinstancetype"
    instance_count: int = 1
    request_settings: RequestSettings = field(default_factory=RequestSettings)
    scale_settings: ScaleSettings = field(default_factory=ScaleSettings)
    liveness_probe: ProbeSettings = field(default_factory=ProbeSettings)
    readiness_probe: ProbeSettings = field(default_factory=ProbeSettings)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Deployment":
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key, kind in (("request_settings", RequestSettings), ("scale_settings", ScaleSettings),
                          ("liveness_probe", ProbeSettings), ("readiness_probe", ProbeSettings)):
            if isinstance(values.get(key), dict):
                values[key] = kind(**values[key])
        return cls(**values)

    def replica_spec_hash(self) -> str:
        """Fingerprint of what a running replica is made from.

        Replicas whose hash differs from the desired one are replaced; a change of
        instance_count or scale settings alone does not restart anything.
        """
        relevant = {
            "code": self.code,
            "scoring_script": self.scoring_script,
            "model_path": self.model_path,
            "environment": self.environment,
            "environment_variables": self.environment_variables,
            "instance_type": self.instance_type,
        }
        return hashlib.sha256(orjson.dumps(relevant, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
