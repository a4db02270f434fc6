"""BatchService: batch endpoints, deployments and jobs, as one object the gateway owns.

The composition root creates it with the state dir and the data roots, awaits start()
(which resumes every unfinished job), serves routes() on the HTTPS scoring port and
admin_routes() on the admin port, forwards batch documents to apply(), and awaits
close() at shutdown (no new mini-batch; in-flight ones get drain_timeout_s to commit,
then the workers are killed — nothing is lost, the rest resumes at the next start).
Synchronous methods are short SQLite calls, safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from . import failpoints, joblog
from .db import open_checked
from .inputs import DataRoots, collect
from .jobs import JobRecord, JobStore
from .requests import JobRequest, RequestError
from .resources import BatchDeployment, BatchEndpoint
from .runner import RunOptions, redact_paths, remove_outputs
from .scheduler import JOB_RETENTION_DAYS, Scheduler
from .settings import SettingsError, apply_settings
from .store import BatchStore, BatchStoreError
from .views import deployment_view, endpoint_view, job_view

__all__ = ["BatchService", "BatchStoreError", "RequestError"]


def _public(text: str | None, folders: tuple[str, ...]) -> str | None:
    """`text` without the server paths of `folders` (runner.redact_paths). The runner stores
    errors already so; this also covers what was stored before it did, or by another path
    (jobs of older versions kept `/srv/…/score.py`, `/data/…` in batch.db and job.log)."""
    return redact_paths(text, folders) if text else text


class BatchService:
    def __init__(self, state_dir: Path, data_roots: list[Path], *, scoring_url: str = "",
                 max_running_jobs: int = 2, max_request_bytes: int = 16 * 1024 * 1024,
                 max_items: int = 1_000_000, max_workers_per_job: int = 32, init_timeout_s: float = 300.0,
                 drain_timeout_s: float = 5.0, python: str = sys.executable,
                 job_retention_days: float = JOB_RETENTION_DAYS) -> None:
        """state_dir holds batch.db and batch/jobs/ (outputs, worker logs); data_roots bound
        every path input. max_running_jobs run at once (the rest queue), each on at most
        max_workers_per_job worker processes; a submission body is at most max_request_bytes
        and a job at most max_items items. A job that ended job_retention_days ago is removed,
        its folder and its rows (0: jobs are kept for ever)."""
        if not job_retention_days >= 0:
            raise ValueError(f"job_retention_days must be 0 or more, got {job_retention_days!r}")
        self.state_dir = Path(state_dir)
        self.scoring_url = scoring_url  # set by the gateway once its port is known
        self.data_roots = DataRoots(list(data_roots))
        self.max_request_bytes = max_request_bytes
        self.max_items = max_items
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._db = open_checked(self.state_dir / "batch.db")  # StateDirUnusable: damaged or emptied
        self.store = BatchStore(self._db)
        self.jobs = JobStore(self._db)
        self._options = RunOptions(jobs_dir=self.state_dir / "batch" / "jobs", python=python,
                                   init_timeout_s=init_timeout_s, max_workers=max_workers_per_job,
                                   data_roots=tuple(str(r) for r in data_roots))
        self.scheduler = Scheduler(self.jobs, self._options, max_running_jobs, drain_timeout_s,
                                   retention_s=job_retention_days * 86400)

    async def start(self) -> None:
        self._options.jobs_dir.mkdir(parents=True, exist_ok=True)
        await self.scheduler.start()

    async def close(self) -> None:
        await self.scheduler.close()
        self._db.close()

    # -- resources (admin side) -------------------------------------------------------------
    def endpoint_names(self) -> set[str]:
        return {r.endpoint.name for r in self.store.list_endpoints()}

    def deployment_keys(self) -> set[tuple[str, str]]:
        return {(d.endpoint_name, d.name) for d in self.store.list_deployments()}

    def apply(self, endpoints: list[BatchEndpoint], deployments: list[BatchDeployment]) -> None:
        """Store desired batch resources in one transaction (BatchStoreError on a bad reference)."""
        self.store.apply(endpoints, deployments)

    async def delete_endpoint(self, name: str) -> bool:
        """Cancel its jobs, then delete the endpoint, its deployments, jobs and outputs."""
        if await asyncio.to_thread(self.store.get_endpoint, name) is None:
            return False
        for job in await asyncio.to_thread(self.jobs.list, name, 10**9):
            if not job.finalized:
                await self.scheduler.cancel(job.id)
        for job_id in await asyncio.to_thread(self.jobs.delete_for_endpoint, name):
            await asyncio.to_thread(remove_outputs, self._options, job_id)
        return await asyncio.to_thread(self.store.delete_endpoint, name)

    def delete_deployment(self, endpoint_name: str, name: str) -> bool:
        """Jobs already accepted keep running: they carry a snapshot of the deployment."""
        return self.store.delete_deployment(endpoint_name, name)

    def keys(self, name: str) -> tuple[str, str] | None:
        record = self.store.get_endpoint(name)
        return record.keys if record else None

    def regenerate_key(self, name: str, which: str) -> tuple[str, str] | None:
        """New `which` ('primary' | 'secondary') key; None if no such endpoint."""
        record = self.store.regenerate_key(name, which)
        return record.keys if record else None

    def list_endpoints(self) -> list[dict]:
        deployments = self.store.list_deployments()
        return [endpoint_view(r, [d for d in deployments if d.endpoint_name == r.endpoint.name], self.scoring_url)
                for r in self.store.list_endpoints()]

    def show_endpoint(self, name: str) -> dict | None:
        record = self.store.get_endpoint(name)
        return endpoint_view(record, self.store.list_deployments(name), self.scoring_url) if record else None

    def list_deployments(self, endpoint_name: str) -> list[dict] | None:
        if self.store.get_endpoint(endpoint_name) is None:
            return None
        return [deployment_view(d) for d in self.store.list_deployments(endpoint_name)]

    def show_deployment(self, endpoint_name: str, name: str) -> dict | None:
        deployment = self.store.get_deployment(endpoint_name, name)
        return deployment_view(deployment) if deployment else None

    # -- jobs ---------------------------------------------------------------------------------
    async def submit(self, endpoint_name: str, request: JobRequest) -> JobRecord:
        """Validate, collect the items and commit the job; RequestError if anything is wrong."""
        deployment = await asyncio.to_thread(self._deployment_for, endpoint_name, request.deployment_name)
        try:
            settings = apply_settings(request.settings, deployment.settings, prefix="settings.")
        except SettingsError as exc:
            raise RequestError(422, "ValidationError", str(exc)) from None
        collected = await asyncio.to_thread(collect, request, self.data_roots, self.max_items)
        spec = {"deployment": replace(deployment, settings=settings).to_dict(),
                "input": {**collected.description, "kind": collected.kind}}
        job_id = f"batchjob-{uuid.uuid4()}"
        job = await asyncio.to_thread(self.jobs.create, job_id, endpoint_name, deployment.name, spec,
                                      collected.refs, collected.payloads, settings.mini_batch_size,
                                      collected.skipped)
        failpoints.hit("after_accept")
        skipped = collected.skipped
        note = ""
        if skipped:
            shown = ", ".join(f"{ref} ({why})" for ref, why in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
            note = f"; {len(skipped)} of them not scored, counted as failed: {shown}"
        await asyncio.to_thread(joblog.append, joblog.job_log_path(self._options.jobs_dir, job_id),
                                f"accepted: {job.items} item(s) of a {request.input_type} input in"
                                f" {job.mini_batches} mini-batch(es), deployment '{deployment.name}'{note}")
        self.scheduler.wake()
        return job

    def _deployment_for(self, endpoint_name: str, wanted: str | None) -> BatchDeployment:
        record = self.store.get_endpoint(endpoint_name)
        if record is None:
            raise RequestError(404, "EndpointNotFound", f"no batch endpoint '{endpoint_name}'")
        name = wanted or record.endpoint.default_deployment
        if name is None:
            deployments = self.store.list_deployments(endpoint_name)
            if len(deployments) != 1:
                raise RequestError(404, "DeploymentNotFound",
                                   f"batch endpoint '{endpoint_name}' has no default deployment;"
                                   " set defaults.deployment_name or send deployment_name")
            return deployments[0]
        deployment = self.store.get_deployment(endpoint_name, name)
        if deployment is None:
            raise RequestError(404, "DeploymentNotFound",
                               f"batch endpoint '{endpoint_name}' has no deployment '{name}'")
        return deployment

    async def cancel_job(self, job_id: str) -> bool:
        return await self.scheduler.cancel(job_id)

    def view(self, job: JobRecord, scoring_url: str | None = None) -> dict:
        """The job as key holders see it: its errors without server paths (_public)."""
        view = job_view(job, self.jobs.counts(job.id), self.jobs.failed_minibatches(job.id),
                        self.scoring_url if scoring_url is None else scoring_url)
        if view["error"] is not None:
            folders = self._server_folders(job)
            view["error"]["message"] = _public(view["error"]["message"], folders)
            for failed in view["error"]["failed_mini_batches"]:
                failed["error"] = _public(failed["error"], folders)
        return view

    def job_logs(self, job: JobRecord, *, workers: bool) -> str:
        """The job's log (serving.batch.joblog); with workers, the scoring script's output too
        (worker logs: tracebacks name server paths, so only the admin port asks for them).
        Without workers (the scoring port's route) server paths are taken out (_public)."""
        text = joblog.read(self._options.jobs_dir, job.id, workers=workers)
        return text if workers else _public(text, self._server_folders(job))

    def _server_folders(self, job: JobRecord) -> tuple[str, ...]:
        """Folders whose paths a job's errors may name: the data roots, the code folder and
        model of the job's deployment snapshot, and the state dir."""
        deployment = job.spec.get("deployment")
        own = [deployment.get(k) for k in ("code", "model_path")] if isinstance(deployment, dict) else []
        return (*self._options.data_roots, *(p for p in own if isinstance(p, str) and p), str(self.state_dir))

    def output_file(self, job: JobRecord) -> Path:
        from .runner import output_path

        return output_path(self._options, job)

    # -- HTTP -----------------------------------------------------------------------------------
    def routes(self, auth_throttle=None) -> list[web.RouteDef]:
        """Job routes for the HTTPS scoring port (pass as RouterApp extra_routes, with the
        router's `auth_throttle`, so failed logins on both paths count together)."""
        from .http import JobRoutes

        return JobRoutes(self, auth_throttle).routes()

    def admin_routes(self) -> list[web.RouteDef]:
        """Batch endpoint routes for the admin port, behind its admin-token middleware."""
        from .admin import AdminRoutes

        return AdminRoutes(self).routes()
