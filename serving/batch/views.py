"""JSON views of batch endpoints, deployments and jobs (CLI, admin API, scoring port).

Names follow `az ml batch-endpoint show` / `batch-deployment show` / `job show` where
there is an equivalent. A job view never shows server paths of the output or the logs:
it is served to key holders on the scoring port.
"""

from __future__ import annotations

from .jobs import TERMINAL, Counts, JobRecord, job_settings
from .resources import BatchDeployment
from .store import BatchEndpointRecord


def jobs_url(scoring_url: str, endpoint: str) -> str:
    return f"{scoring_url}/api/v1/batch/{endpoint}/jobs"


def endpoint_view(record: BatchEndpointRecord, deployments: list[BatchDeployment], scoring_url: str) -> dict:
    endpoint = record.endpoint
    return {
        "name": endpoint.name,
        "kind": "batch",
        "auth_mode": endpoint.auth_mode,
        "defaults": {"deployment_name": endpoint.default_deployment},
        "scoring_uri": jobs_url(scoring_url, endpoint.name),
        "provisioning_state": "Succeeded",
        "deployments": [d.name for d in deployments],
        "description": endpoint.description,
        "tags": endpoint.tags,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def deployment_view(deployment: BatchDeployment) -> dict:
    return {
        "name": deployment.name,
        "endpoint_name": deployment.endpoint_name,
        "kind": "batch",
        "type": "model",
        "code_configuration": {"code": deployment.code, "scoring_script": deployment.scoring_script},
        "model": {"path": deployment.model_path},
        "environment": deployment.environment,
        "environment_variables": deployment.environment_variables,
        "settings": deployment.settings.to_dict(),
        "instance_count": deployment.settings.instance_count,
        "provisioning_state": "Succeeded",
        "description": deployment.description,
        "tags": deployment.tags,
    }


def job_view(job: JobRecord, counts: Counts, failed: list[dict], scoring_url: str) -> dict:
    settings = job_settings(job) or {}  # {}: a damaged record (docs/batch.md), shown as far as it goes
    url = f"{jobs_url(scoring_url, job.endpoint_name)}/{job.id}"
    end = job.finished_at  # set when the job ended (finish, or a cancel whose output could not be written)
    error = None
    if job.error or counts.failed_items:
        error = {"message": job.error or f"{counts.failed_items} item(s) failed (within error_threshold"
                 f" {settings.get('error_threshold')})", "failed_items": counts.failed_items,
                 "failed_mini_batches": failed}
    summary_only = settings.get("output_action") == "summary_only"
    if summary_only:  # no file is written: output_file_name names nothing, so the view does not show it
        settings = {k: v for k, v in settings.items() if k != "output_file_name"}
    given = job.spec.get("input")
    description = {k: v for k, v in given.items() if k != "kind"} if isinstance(given, dict) else {}
    return {
        "name": job.id,
        "id": job.id,
        "type": "batch",
        "endpoint_name": job.endpoint_name,
        "deployment_name": job.deployment_name,
        "status": job.status,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": end,
        "duration_s": round(end - job.started_at, 3) if end and job.started_at else None,
        "input": description,
        "settings": settings,
        "mini_batches": {"total": job.mini_batches, "succeeded": counts.succeeded, "failed": counts.failed,
                         "pending": counts.pending, "retried": counts.retried, "retries": counts.retries},
        "items": {"total": job.items, "succeeded": counts.succeeded_items, "failed": counts.failed_items,
                  "pending": counts.pending_items},
        "error": error,
        "output": {"action": settings.get("output_action"),
                   "file_name": None if summary_only else settings.get("output_file_name"),
                   "url": f"{url}/output", "ready": job.finalized and job.status in TERMINAL},
        "url": url,
    }
