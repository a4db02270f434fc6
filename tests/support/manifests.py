"""Write Azure ML v2-style YAML for test endpoints and deployments of the echo model."""

from __future__ import annotations

from pathlib import Path

import yaml

ECHO_MODEL = Path(__file__).resolve().parents[1] / "fakes" / "models" / "echo"


def write_endpoint(folder: Path, name: str, *, traffic: dict | None = None, mirror: dict | None = None,
                   auth_mode: str = "key") -> Path:
    body = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json",
        "name": name, "auth_mode": auth_mode, "traffic": traffic or {},
    }
    if mirror:
        body["mirror_traffic"] = mirror
    path = Path(folder) / f"{name}-endpoint.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def write_deployment(folder: Path, endpoint: str, name: str, *, env: dict | None = None,
                     instance_count: int = 1, request_settings: dict | None = None,
                     scale_settings: dict | None = None) -> Path:
    """A deployment of the echo model; request_settings default to 8 slots per replica
    so tests can send a few requests at once without meeting admission limits."""
    body = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json",
        "name": name,
        "endpoint_name": endpoint,
        "code_configuration": {"code": str(ECHO_MODEL), "scoring_script": "score.py"},
        "instance_count": instance_count,
        "environment_variables": {"LABEL": name, **(env or {})},
    }
    body["request_settings"] = request_settings or {"max_concurrent_requests_per_instance": 8}
    if scale_settings:
        body["scale_settings"] = scale_settings
    path = Path(folder) / f"{endpoint}-{name}-deployment.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path
