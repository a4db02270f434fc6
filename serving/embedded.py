"""Composition root of `scoregate serve`: router + controller + admin API in one process.

Start order: state dir (its folders checked) → TLS → store (checked: a damaged one is
refused) → (initial apply) → router → controller → admin port → gateway.json. Shutdown
order (SIGINT/SIGTERM): stop accepting and finish in-flight requests (bounded) → stop
the controller → stop every replica → close the upstream pool and the admin port →
remove gateway.json. No replica outlives this.
SIGHUP re-reads the TLS certificate files at once (they are also watched).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

from aiohttp import web

from router import AuthThrottle, RouterApp, RouterSettings, RoutingTableHolder
from router.aiohttp_hardening import app_runner
from tls import CertificateSource, ServerTLS, TLSConfigError, TLSMetrics, ensure_dev_certificates, new_ticket_keys
from tls.redirect import certificate_names, redirect_app

from .admin_errors import install as install_request_ids
from .api import AdminApi
from .backends.local import LocalProcessBackend
from .controller.autoscaling import Autoscaling
from .controller.loop import Controller
from .controller.preparing import Preparer
from .controller.publisher import RoutingPublisher
from .controller.rollouts import RolloutManager
from .applying import parse_documents, write
from .batch.scheduler import JOB_RETENTION_DAYS
from .batch.service import BatchService, BatchStoreError
from .gc_freeze import freeze_once_serving
from .manifests import ManifestError, read_documents
from .metrics import ControlPlaneMetrics
from .tracing_setup import TracingUnavailable, setup_tracing
from .replica_tls import ReplicaTLS
from .statedir import GatewayInfo, StateDir, StateDirBusy, StateDirUnusable
from .status import GatewayStatus, StatusPage
from .tokens import TokenIssuer
from .workers import WorkerPool, WorkerSettings
from .workers.pool import WorkerStartError
from .store.sqlite import SqliteStore, open_checked

log = logging.getLogger("scoregate")


@dataclass
class ServeOptions:
    state_dir: Path
    paths: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8443
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_key_password_file: str | None = None
    tls_key_password_env: str | None = None
    tls_sni_certs: list[str] = field(default_factory=list)
    tls_client_ca: str | None = None
    tls_reload_interval_s: float = 10.0
    http_redirect_port: int | None = None
    replica_mtls: bool = False
    domain: str | None = None
    rollout_timeout_s: float = 20 * 60.0
    data_roots: list[str] = field(default_factory=list)
    job_retention_days: float = JOB_RETENTION_DAYS  # ended batch jobs are removed this long after (0: never)
    access_log: str | None = "default"  # "default": STATE_DIR/logs/access.log; "-": stdout; None: off
    access_log_sample_rate: float = 1.0
    otel_exporter: str | None = None  # console | otlp
    drain_timeout_s: float = 30.0
    # Router processes on the scoring port (SO_REUSEPORT); 1: the router runs in this process.
    workers: int = 1


class StartupError(Exception):
    """The gateway cannot start; the message says why (bad YAML, bad certificate...)."""


def _local_name(host: str) -> str:
    """The host part of a URL to this gateway: an IPv6 address in brackets (https://[::1]:8443)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"[{host}]" if ":" in host else host


def _listening_urls(scheme: str, addresses: list) -> str:
    """The URLs of the sockets a listener really bound (`--admin-host 0.0.0.0` is told
    as such, a host name as each address it resolved to)."""
    return ", ".join(f"{scheme}://{f'[{a[0]}]' if ':' in a[0] else a[0]}:{a[1]}" for a in addresses)


def _beyond_loopback(addresses: list) -> list[str]:
    """The bound addresses other machines may reach (the wildcard ones included)."""
    return [a[0] for a in addresses if not ipaddress.ip_address(a[0].split("%", 1)[0]).is_loopback]


def _warn_if_admin_exposed(addresses: list) -> None:
    """Once at start: the admin port is plain HTTP and its /metrics needs no token, which
    is meant for loopback only."""
    exposed = _beyond_loopback(addresses)
    if exposed:
        log.warning("the admin port listens beyond loopback (%s): it speaks plain HTTP and serves /metrics "
                    "without a token; bind it to 127.0.0.1 or put it behind a TLS proxy that lets only your "
                    "own callers in (docs/observability.md)", _listening_urls("http", addresses))


class EmbeddedGateway:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.state = StateDir(options.state_dir)
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second SIGINT/SIGTERM: do not wait for the drain
        self.admin_token = secrets.token_urlsafe(32)
        self.server_tls: ServerTLS | None = None
        self._tls_sources: list[CertificateSource] = []
        self._pool: WorkerPool | None = None

    def request_stop(self) -> None:
        """The first signal drains (up to --drain-timeout); a second one stops now, as an
        operator pressing Ctrl-C twice expects."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def request_tls_reload(self) -> None:
        if self._pool is not None:
            self._pool.reload_tls()
        elif self.server_tls is not None:
            asyncio.get_running_loop().create_task(asyncio.to_thread(self.server_tls.reload))

    async def run(self, ready: asyncio.Event | None = None) -> None:
        for root in self.options.data_roots:  # a typo would only show when a job is refused
            if not Path(root).is_dir():
                raise StartupError(f"--data-root {root}: {'not a folder' if Path(root).exists() else 'no such folder'}")
        if self.state.root.exists() and not self.state.root.is_dir():
            raise StartupError(f"--state-dir {self.state.root}: not a folder")
        self.state.create()
        lock = self.state.acquire()  # StateDirBusy: another gateway serves this dir
        try:
            self.state.check_folders()
            self.server_tls, ca_cert = await asyncio.to_thread(self._load_tls)
            store = await asyncio.to_thread(open_checked, self.state.store_path)
            batch = BatchService(self.state.root, [Path(p).resolve() for p in self.options.data_roots],
                                 job_retention_days=self.options.job_retention_days)
            try:
                if self.options.paths:
                    await asyncio.to_thread(self._initial_apply, store, batch, self.options.paths)
                await self._serve(store, batch, ca_cert, ready)
            finally:
                await batch.close()
                store.close()
        finally:
            os.close(lock)

    def _load_tls(self) -> tuple[ServerTLS, str]:
        """The listener's certificates: given PEM files, or the development CA's."""
        opts = self.options
        if opts.tls_cert:
            cert, key, ca = Path(opts.tls_cert), Path(opts.tls_key or ""), ""
        else:
            hostnames = ["localhost", "127.0.0.1", "::1"]
            if opts.host not in ("0.0.0.0", "::", "", *hostnames):
                hostnames.append(opts.host)
            if opts.domain:
                hostnames += [opts.domain, f"*.{opts.domain}"]
            try:
                paths = ensure_dev_certificates(self.state.tls_dir, hostnames)
            except ValueError as exc:  # --host or --domain is not a name a certificate can hold
                raise StartupError(f"cannot make the development certificate: {exc}") from None
            cert, key, ca = paths.cert, paths.key, str(paths.ca_cert)
        try:
            sources = [CertificateSource(
                "default", cert, key,
                Path(opts.tls_key_password_file) if opts.tls_key_password_file else None,
                opts.tls_key_password_env)]
            sources += [CertificateSource.parse(spec) for spec in opts.tls_sni_certs]
            self._tls_sources = sources
            return ServerTLS(sources, default="default", client_ca_file=opts.tls_client_ca), ca
        except TLSConfigError as exc:
            raise StartupError(str(exc)) from None

    @staticmethod
    def _initial_apply(store: SqliteStore, batch: BatchService, paths: list[str]) -> None:
        try:
            applied = parse_documents(read_documents(paths), store, batch)
            write(applied, store, batch)
        except (ManifestError, BatchStoreError) as exc:
            raise StartupError(str(exc)) from None
        log.info("applied %s from %s", ", ".join(f"{a['kind']} {a['name']}" for a in applied.summary()),
                 ", ".join(paths))

    async def _serve(self, store, batch: BatchService, ca_cert: str, ready: asyncio.Event | None) -> None:
        opts = self.options
        server_tls = self.server_tls
        assert server_tls is not None
        replica_tls = await asyncio.to_thread(ReplicaTLS, self.state.tls_dir) if opts.replica_mtls else None
        holder = RoutingTableHolder()
        setup_tracing(opts.otel_exporter)
        access_log = str(self.state.root / "logs" / "access.log") if opts.access_log == "default" else opts.access_log
        token_secret = await asyncio.to_thread(store.secret, "aml_token")
        tokens = TokenIssuer(token_secret)
        settings = RouterSettings(
            host=opts.host, port=opts.port, domain=opts.domain, access_log=access_log,
            access_log_sample_rate=opts.access_log_sample_rate)
        if opts.workers > 1:
            # N router processes; this one keeps the control plane (serving/workers).
            router = self._pool = WorkerPool(opts.workers, WorkerSettings(
                router=replace(settings, reuse_port=True, queue_share=opts.workers),
                tls_sources=tuple(self._tls_sources), tls_client_ca=opts.tls_client_ca,
                tls_reload_interval_s=opts.tls_reload_interval_s, tls_ticket_keys=new_ticket_keys(),
                replica_client_dir=replica_tls.client_dir if replica_tls else None,
                replica_ca_file=replica_tls.ca_file if replica_tls else None,
                token_secret=token_secret, otel_exporter=opts.otel_exporter, drain_timeout_s=opts.drain_timeout_s,
                log_level=logging.getLogger().getEffectiveLevel()), holder, batch_routes=batch.routes())
            registry = router.registry
            if replica_tls is not None:
                replica_tls.on_client_renewed = router.reload_replica_client
        else:
            # One failed-auth throttle for scoring and the batch job routes: guesses on
            # either path count together. (With --workers, each worker throttles its own
            # scoring callers and this process the batch ones: batch_proxy.py passes the
            # caller's address on.)
            auth_throttle = AuthThrottle()
            router = RouterApp(replace(
                settings, ssl_context=server_tls.context,
                upstream_ssl_context=replica_tls.client_context if replica_tls else None), holder,
                token_verifier=tokens.verify, extra_routes=batch.routes(auth_throttle), auth_throttle=auth_throttle)
            registry = router.recorder.registry
            server_tls.attach_metrics(TLSMetrics(registry))
        controller_ref: list[Controller] = []
        backend = LocalProcessBackend(
            self.state.root, on_change=lambda: controller_ref and controller_ref[0].on_replica_change(),
            drain=router.wait_replica_idle, replica_tls=replica_tls)
        autoscaling = Autoscaling(router.take_utilization, registry=registry,
                                  on_change=lambda: controller_ref and controller_ref[0].notify())
        metrics = ControlPlaneMetrics(registry)
        rollouts = RolloutManager(Preparer(self.state.root / "models", store.list_instance_types),
                                  default_budget_s=opts.rollout_timeout_s, metrics=metrics,
                                  on_change=lambda: controller_ref and controller_ref[0].notify())
        controller = Controller(store, backend, RoutingPublisher(holder), rollouts, autoscaling=autoscaling,
                                metrics=metrics)
        controller_ref.append(controller)
        api = AdminApi(store, controller, backend, admin_token=self.admin_token,
                       scoring_url=f"https://{_local_name(opts.host)}:{opts.port}",
                       autoscaling=autoscaling, load=router.load, tokens=tokens, batch=batch)
        status = GatewayStatus(store, controller, backend, admin_token=self.admin_token, router=router,
                               autoscaling=autoscaling, batch=batch, registry=registry)
        status_page = StatusPage(status.snapshot, admin_token=self.admin_token)
        admin_app = web.Application(middlewares=[api.auth_middleware])
        install_request_ids(admin_app)
        admin_app.add_routes(router.admin_routes() + api.routes() + batch.admin_routes()
                             + status.api_routes() + status_page.routes())
        admin_runner = app_runner(admin_app, access_log=None, handle_signals=False)
        redirect_runner: web.AppRunner | None = None
        redirect_url: str | None = None

        served = False
        await backend.start()
        try:
            await batch.start()
            try:
                await router.start()
            except WorkerStartError as exc:
                raise StartupError(str(exc)) from None
            if opts.tls_reload_interval_s > 0 and self._pool is None:
                server_tls.watch(opts.tls_reload_interval_s)  # workers watch their own
            if replica_tls is not None:
                await replica_tls.start()
            if opts.http_redirect_port is not None:
                redirect_runner = app_runner(
                    redirect_app(router.port, default_host=_local_name(opts.host),
                                 host_names=certificate_names(server_tls)),
                    access_log=None, handle_signals=False)
                await redirect_runner.setup()
                await web.TCPSite(redirect_runner, opts.host, opts.http_redirect_port,
                                  reuse_address=True).start()
                redirect_url = f"http://{_local_name(opts.host)}:{redirect_runner.addresses[0][1]}"
            await controller.start()
            await autoscaling.start()
            await status.start()
            await admin_runner.setup()
            await web.TCPSite(admin_runner, opts.admin_host, opts.admin_port, reuse_address=True).start()
            admin_port = admin_runner.addresses[0][1]
            scoring_url = f"https://{_local_name(opts.host)}:{router.port}"
            api.scoring_url = batch.scoring_url = status.scoring_url = scoring_url  # port 0 known only now
            self.state.write_gateway(GatewayInfo(
                admin_url=f"http://{_local_name(opts.admin_host)}:{admin_port}",
                admin_token=self.admin_token, scoring_url=scoring_url, ca_cert=ca_cert,
                pid=os.getpid(), redirect_url=redirect_url,
                server_cert=str(Path(opts.tls_cert).resolve()) if opts.tls_cert else None))
            told = [f"admin {_listening_urls('http', admin_runner.addresses)}"]
            if redirect_runner is not None:
                told.insert(0, f"HTTP redirect {_listening_urls('http', redirect_runner.addresses)}")
            log.info("scoregate serving on %s (%s, state %s)", scoring_url, ", ".join(told), self.state.root)
            served = True
            _warn_if_admin_exposed(admin_runner.addresses)
            if ready is not None:
                ready.set()
            await self._stop.wait()
            log.info("shutting down: draining in-flight requests (up to %gs)", opts.drain_timeout_s)
        finally:
            await status.close()
            await self._drain(router, opts.drain_timeout_s)
            await batch.close()
            await autoscaling.close()
            await controller.close()
            await backend.close(hurried=self._hurry.is_set())
            await router.close()
            await server_tls.close()
            if replica_tls is not None:
                await replica_tls.close()
            if redirect_runner is not None:
                await redirect_runner.cleanup()
            await admin_runner.cleanup()
            self.state.remove_gateway(os.getpid())
            if served:  # a start that failed says why (run_serve), not "stopped" before it
                log.info("stopped")

    async def _drain(self, router, timeout_s: float) -> None:
        """router.drain(timeout_s), cut short by a second signal: then what is still being
        answered is cancelled (--workers: the workers are stopped within seconds)."""
        draining = asyncio.ensure_future(router.drain(timeout_s))
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait([draining, hurried], return_when=asyncio.FIRST_COMPLETED)
            if not draining.done():
                log.warning("second signal: not waiting for the requests in flight")
                if self._pool is not None:
                    self._pool.hurry()
                draining.cancel()
                await asyncio.gather(draining, return_exceptions=True)
                await router.drain(0)
        finally:
            hurried.cancel()


def run_serve(options: ServeOptions) -> int:
    """Run the gateway until SIGINT/SIGTERM; returns the process exit code."""

    async def main() -> int:
        gateway = EmbeddedGateway(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.request_stop)
        loop.add_signal_handler(signal.SIGHUP, gateway.request_tls_reload)
        serving = asyncio.Event()
        freezing = loop.create_task(freeze_once_serving(serving))
        try:
            await gateway.run(serving)
        except (StartupError, TracingUnavailable) as exc:
            log.error("%s", exc)
            return 2
        except (StateDirBusy, StateDirUnusable, OSError) as exc:
            hint = ("; --port and --admin-port choose others (0: any free port)"
                    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE else "")
            log.error("cannot start: %s%s", exc, hint)
            return 1
        finally:
            freezing.cancel()
        return 0

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
