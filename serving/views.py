"""JSON views of endpoints and deployments, as the CLI and the admin API show them.

Field names follow `az ml online-endpoint show` / `online-deployment show` where they
have an equivalent, so scripts written for Azure ML read them unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from .backends import EXITED, READY, STARTING, ReplicaView
from .resources import Deployment, ScaleSettings
from .store import EndpointRecord


def endpoint_view(record: EndpointRecord, deployments: list[Deployment], scoring_url: str) -> dict:
    endpoint = record.endpoint
    base = f"{scoring_url}/api/v1/endpoint/{endpoint.name}"
    return {
        "name": endpoint.name,
        "kind": "online",
        "auth_mode": endpoint.auth_mode,
        "traffic": endpoint.traffic,
        "mirror_traffic": endpoint.mirror_traffic,
        "rate_limit": endpoint.rate_limit,
        "scoring_uri": f"{base}/score",
        "openapi_uri": f"{base}/swagger.json",
        "provisioning_state": "Succeeded",
        "deployments": [d.name for d in deployments],
        "description": endpoint.description,
        "tags": endpoint.tags,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def deployment_state(rollout) -> str:
    """Creating / Updating (a rollout in progress) / Succeeded / Failed, as Azure ML says."""
    if rollout is None:
        return "Creating"
    if rollout.state == "InProgress":
        return "Updating" if rollout.kind == "update" else "Creating"
    return rollout.state


def scale_settings_view(scale: ScaleSettings) -> dict:
    """As Azure ML shows them: default scale settings are `type` alone (the autoscaler's
    fields are refused there, so a shown deployment applies again as it is)."""
    return asdict(scale) if scale.type != "default" else {"type": scale.type}


def deployment_view(deployment: Deployment, replicas: list[ReplicaView], rollout=None) -> dict:
    mine = [r for r in replicas
            if r.endpoint == deployment.endpoint_name and r.deployment == deployment.name]
    view_of_rollout = rollout.view(time.time()) if rollout is not None else None
    return {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint_name,
        "provisioning_state": deployment_state(rollout),
        "rollout": view_of_rollout,
        "instance_type": deployment.instance_type,
        "instance_count": deployment.instance_count,
        "ready_replicas": sum(1 for r in mine if r.state == READY),
        "version": deployment.replica_spec_hash(),
        "model": deployment.model_path,
        "code_configuration": {"code": deployment.code, "scoring_script": deployment.scoring_script},
        "environment": deployment.environment,
        "environment_variables": deployment.environment_variables,
        "request_settings": asdict(deployment.request_settings),
        "scale_settings": scale_settings_view(deployment.scale_settings),
        "liveness_probe": asdict(deployment.liveness_probe),
        "readiness_probe": asdict(deployment.readiness_probe),
        "replicas": [
            {"replica_id": r.replica_id, "state": r.state, "port": r.port, "pid": r.pid,
             "restarts": r.restarts, "started_at": r.started_at, "version": r.spec_hash,
             **({"phase": r.phase} if r.state == STARTING else {}),
             **({"exit_code": r.exit_code, "stage": r.failed_stage, "reason": r.reason}
                if r.state == EXITED else {})}
            for r in sorted(mine, key=lambda r: r.started_at)
        ],
    }
