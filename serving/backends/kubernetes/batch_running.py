"""The batch runner on a cluster: BatchEndpoint / BatchDeployment CRs → jobs served over HTTPS.

One process (a single-replica Deployment with a PersistentVolume for its state dir)
composes: API client → BatchService (serving/batch: batch.db, worker processes, the
exactly-once rules of docs/batch.md) → BatchResources (batch_sync.py: the CRs, their
keys Secrets and status) → the batch routes of docs/batch.md on its HTTPS port. Jobs
run in this pod, not in model pods: batch work never takes an online replica's slot, as
in the embedded gateway. With leader election (Lease `scoregate-batch`) a second pod
started by a rolling update waits until the first has let go of the Lease (and of the
database). Shutdown: stop accepting, let mini-batches in flight commit, then exit; the
rest resumes at the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web

from router.aiohttp_hardening import app_runner

from ...batch.scheduler import JOB_RETENTION_DAYS
from ...batch.service import BatchService
from .api import KubeApi, load_api_client
from .batch_sync import BatchResources
from .leasing import LeaseElector, run_elected, until_stopped

log = logging.getLogger("scoregate.kubernetes.batch")


@dataclass(frozen=True)
class BatchRunnerSettings:
    state_dir: str
    data_roots: tuple[str, ...] = ()
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] | None = ("default",)  # None: all namespaces
    host: str = "0.0.0.0"
    port: int = 8443
    tls_cert: str | None = None  # PEM files (a mounted kubernetes.io/tls Secret); None: a development certificate
    tls_key: str | None = None
    max_running_jobs: int = 2
    job_retention_days: float = JOB_RETENTION_DAYS  # ended jobs are removed this long after (0: never)
    drain_timeout_s: float = 5.0
    leader_election: bool = True
    lease_namespace: str = "scoregate-system"
    lease_name: str = "scoregate-batch"
    identity: str = ""
    hostnames: tuple[str, ...] = field(default_factory=lambda: ("localhost", "127.0.0.1"))


@dataclass
class RunningBatch:
    """What a started runner offers (for on_ready): the service, its URL, the CR sync."""

    service: BatchService
    resources: BatchResources
    scoring_url: str
    ca_cert: str | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `scoregate batch-runner --backend kubernetes`."""
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    namespaces = parser.add_mutually_exclusive_group()  # both given: which one meant?
    namespaces.add_argument("--namespace", action="append", dest="namespaces", default=None,
                            help="namespace whose BatchEndpoints/BatchDeployments to act on (repeatable; default: default)")
    namespaces.add_argument("--all-namespaces", action="store_true", help="act on every namespace")
    parser.add_argument("--state-dir", required=True,
                        help="folder for batch.db, job outputs, fetched code and models (a PersistentVolume)")
    parser.add_argument("--data-root", action="append", dest="data_roots", default=None, metavar="DIR",
                        help="folder batch job inputs may come from (repeatable; without any, inline inputs only)")
    parser.add_argument("--host", default="0.0.0.0", help="HTTPS listener address")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port of the batch API (default 8443)")
    parser.add_argument("--tls-cert", default=None,
                        help="PEM certificate chain, e.g. tls.crt of a mounted kubernetes.io/tls Secret "
                             "(default: a development certificate in STATE_DIR/tls)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--hostname", action="append", dest="hostnames", default=None,
                        help="name the development certificate covers (repeatable; default localhost, 127.0.0.1)")
    parser.add_argument("--max-running-jobs", type=int, default=2, help="jobs running at once; the rest wait")
    parser.add_argument("--job-retention-days", type=float, default=JOB_RETENTION_DAYS, metavar="DAYS",
                        help="remove an ended job (its output, logs and record) this many days after it ended; "
                             f"0 keeps every job (default {JOB_RETENTION_DAYS:g})")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="seconds mini-batches in flight get to commit at shutdown")
    parser.add_argument("--no-leader-election", action="store_true",
                        help="run without the Lease (only if nothing else can start a second runner)")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "scoregate-system"),
                        help="namespace of the Lease scoregate-batch (default: $POD_NAMESPACE or scoregate-system)")
    parser.add_argument("--identity", default=os.environ.get("POD_NAME", ""),
                        help="this runner's name in the Lease (default: $POD_NAME or HOST-PID)")


def settings_from_args(args: argparse.Namespace) -> BatchRunnerSettings:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.max_running_jobs < 1:
        raise ValueError("--max-running-jobs must be at least 1")
    if not args.job_retention_days >= 0:
        raise ValueError("--job-retention-days must be 0 or more")
    namespaces = None if args.all_namespaces else tuple(args.namespaces or ("default",))
    extra = {"hostnames": tuple(args.hostnames)} if args.hostnames else {}
    return BatchRunnerSettings(
        state_dir=args.state_dir, data_roots=tuple(args.data_roots or ()), kubeconfig=args.kubeconfig,
        context=args.context, namespaces=namespaces, host=args.host, port=args.port, tls_cert=args.tls_cert,
        tls_key=args.tls_key, max_running_jobs=args.max_running_jobs, job_retention_days=args.job_retention_days,
        drain_timeout_s=args.drain_timeout,
        leader_election=not args.no_leader_election, lease_namespace=args.lease_namespace, identity=args.identity,
        **extra)


def _tls(settings: BatchRunnerSettings, state: Path):
    from tls import ensure_dev_certificates, server_context

    if settings.tls_cert and settings.tls_key:
        return server_context(settings.tls_cert, settings.tls_key), None
    paths = ensure_dev_certificates(state / "tls", list(settings.hostnames))
    return server_context(str(paths.cert), str(paths.key)), str(paths.ca_cert)


async def run_batch(settings: BatchRunnerSettings, stop: asyncio.Event | None = None, *,
                    on_ready: Callable[[RunningBatch], None] = lambda _r: None) -> None:
    """Run until `stop` is set (or the Lease is lost)."""
    stop = stop or asyncio.Event()
    api = KubeApi(await load_api_client(settings.kubeconfig, settings.context))
    try:
        await run_elected(api, enabled=settings.leader_election, namespace=settings.lease_namespace,
                          lease_name=settings.lease_name, identity=settings.identity, stop=stop,
                          body=lambda elector: _serve(api, settings, stop, elector, on_ready),
                          name="batch lease")
    finally:
        await api.close()


async def _serve(api: KubeApi, settings: BatchRunnerSettings, stop: asyncio.Event, elector: LeaseElector | None,
                 on_ready: Callable[[RunningBatch], None]) -> None:
    state = Path(settings.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    context, ca_cert = await asyncio.to_thread(_tls, settings, state)
    service = BatchService(state, [Path(r) for r in settings.data_roots], max_running_jobs=settings.max_running_jobs,
                           job_retention_days=settings.job_retention_days,
                           drain_timeout_s=settings.drain_timeout_s)
    resources = BatchResources(api, service, namespaces=settings.namespaces, artifacts_dir=state / "artifacts")
    app = web.Application()
    app.add_routes(service.routes())
    runner = app_runner(app, access_log=None, handle_signals=False)
    await service.start()
    try:
        await resources.start()
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port, ssl_context=context).start()
        port = runner.addresses[0][1]
        service.scoring_url = f"https://{'127.0.0.1' if settings.host in ('0.0.0.0', '') else settings.host}:{port}"
        log.info("batch runner serving jobs on port %d for %s", port,
                 ", ".join(settings.namespaces) if settings.namespaces else "all namespaces")
        if ca_cert:
            log.info("serving a development certificate; clients verify it with the CA in %s", ca_cert)
        on_ready(RunningBatch(service, resources, service.scoring_url, ca_cert))
        await until_stopped(stop, elector)
    finally:
        await runner.cleanup()
        await resources.close()
        await service.close()
