"""Batch resources as frozen dataclasses, in the shape of Azure ML v2 batch YAML.

Kept apart from serving.resources (online) because batch deployments carry job settings
rather than request/scale settings, and are never run as online replicas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

OUTPUT_ACTIONS = ("append_row", "summary_only")
LOGGING_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class RetrySettings:
    max_retries: int = 3
    timeout: float = 30.0  # seconds one run(mini_batch) may take


@dataclass(frozen=True)
class BatchSettings:
    """Azure ML's batch deployment settings and defaults."""

    mini_batch_size: int = 10
    instance_count: int = 1
    max_concurrency_per_instance: int = 1
    error_threshold: int = -1  # failed items tolerated; -1 = ignore every failure
    retry_settings: RetrySettings = field(default_factory=RetrySettings)
    output_action: str = "append_row"
    output_file_name: str = "predictions.csv"
    logging_level: str = "info"

    @property
    def parallelism(self) -> int:
        return self.instance_count * self.max_concurrency_per_instance

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BatchSettings":
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if isinstance(values.get("retry_settings"), dict):
            values["retry_settings"] = RetrySettings(**values["retry_settings"])
        return cls(**values)


@dataclass(frozen=True)
class BatchEndpoint:
    name: str
    auth_mode: str = "key"
    default_deployment: str | None = None  # YAML: defaults.deployment_name
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BatchEndpoint":
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class BatchDeployment:
    name: str
    endpoint_name: str
    code: str  # absolute folder
    scoring_script: str
    model_path: str | None = None  # absolute folder or file
    environment: dict = field(default_factory=dict)
    environment_variables: dict[str, str] = field(default_factory=dict)
    settings: BatchSettings = field(default_factory=BatchSettings)
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BatchDeployment":
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if isinstance(values.get("settings"), dict):
            values["settings"] = BatchSettings.from_dict(values["settings"])
        return cls(**values)
