"""JSON views of endpoints and deployments, as the CLI and the admin API show them.

Field names follow `az ml online-endpoint show` / `online-deployment show` where they
have an equivalent, so scripts written for Azure ML read them unchanged.
"""

from __future__ import annotations

from dataclasses import asdict

from .backends import EXITED, READY, STARTING, ReplicaView
from .resources import Deployment
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


def deployment_state(deployment: Deployment, replicas: list[ReplicaView]) -> str:
    """Creating / Updating / Succeeded, from what the backend observes now."""
    spec_hash = deployment.replica_spec_hash()
    current_ready = sum(1 for r in replicas if r.spec_hash == spec_hash and r.state == READY)
    stale = any(r.spec_hash != spec_hash and r.state in (STARTING, READY) for r in replicas)
    wanted = deployment.instance_count
    if deployment.scale_settings.type == "target_utilization":
        wanted = max(deployment.scale_settings.min_instances, min(wanted, deployment.scale_settings.max_instances))
    if current_ready >= wanted and not stale:
        return "Succeeded"
    if stale or any(r.state == READY for r in replicas):
        return "Updating"
    return "Creating"


def deployment_view(deployment: Deployment, replicas: list[ReplicaView]) -> dict:
    mine = [r for r in replicas
            if r.endpoint == deployment.endpoint_name and r.deployment == deployment.name]
    return {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint_name,
        "provisioning_state": deployment_state(deployment, mine),
        "instance_type": deployment.instance_type,
        "instance_count": deployment.instance_count,
        "ready_replicas": sum(1 for r in mine if r.state == READY),
        "model": deployment.model_path,
        "code_configuration": {"code": deployment.code, "scoring_script": deployment.scoring_script},
        "environment": deployment.environment,
        "environment_variables": deployment.environment_variables,
        "request_settings": asdict(deployment.request_settings),
        "scale_settings": asdict(deployment.scale_settings),
        "liveness_probe": asdict(deployment.liveness_probe),
        "readiness_probe": asdict(deployment.readiness_probe),
        "replicas": [
            {"replica_id": r.replica_id, "state": r.state, "port": r.port, "pid": r.pid,
             "restarts": r.restarts, "started_at": r.started_at,
             **({"exit_code": r.exit_code, "reason": r.reason} if r.state == EXITED else {})}
            for r in sorted(mine, key=lambda r: r.started_at)
        ],
    }
