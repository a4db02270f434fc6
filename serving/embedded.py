"""Composition root of `scoregate serve`: router + controller + admin API in one process.

Start order: state dir → TLS → store → (initial apply) → router → controller → admin
port → gateway.json. Shutdown order (SIGINT/SIGTERM): stop accepting and finish
in-flight requests (bounded) → stop the controller → stop every replica → close the
upstream pool and the admin port → remove gateway.json. No replica outlives this.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from router import RouterApp, RouterSettings, RoutingTableHolder
from tls import TLSConfigError, ensure_dev_certificates, server_context

from .api import AdminApi
from .backends.local import LocalProcessBackend
from .controller.autoscaling import Autoscaling
from .controller.loop import Controller
from .controller.publisher import RoutingPublisher
from .manifests import parse_all, read_documents
from .statedir import GatewayInfo, StateDir
from .store.sqlite import SqliteStore

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
    drain_timeout_s: float = 30.0


class StartupError(Exception):
    """The gateway cannot start; the message says why (bad YAML, bad certificate...)."""


def _local_name(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class EmbeddedGateway:
    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.state = StateDir(options.state_dir)
        self._stop = asyncio.Event()
        self.admin_token = secrets.token_urlsafe(32)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        opts = self.options
        self.state.create()
        if opts.tls_cert and opts.tls_key:
            cert, key, ca = opts.tls_cert, opts.tls_key, ""
        else:
            hostnames = ["localhost", "127.0.0.1", "::1"]
            if opts.host not in ("0.0.0.0", "::", "", *hostnames):
                hostnames.append(opts.host)
            paths = await asyncio.to_thread(ensure_dev_certificates, self.state.tls_dir, hostnames)
            cert, key, ca = str(paths.cert), str(paths.key), str(paths.ca_cert)
        try:
            ssl_context = await asyncio.to_thread(server_context, cert, key)
        except TLSConfigError as exc:
            raise StartupError(str(exc)) from None

        store = SqliteStore(self.state.store_path)
        try:
            if opts.paths:
                await asyncio.to_thread(self._initial_apply, store, opts.paths)
            await self._serve(store, ssl_context, ca, ready)
        finally:
            store.close()

    @staticmethod
    def _initial_apply(store: SqliteStore, paths: list[str]) -> None:
        from .manifests import ManifestError

        try:
            documents = read_documents(paths)
            endpoints, deployments = parse_all(
                documents, {r.endpoint.name for r in store.list_endpoints()},
                {(d.endpoint_name, d.name) for d in store.list_deployments()})
        except ManifestError as exc:
            raise StartupError(str(exc)) from None
        store.apply(endpoints, deployments)
        log.info("applied %d endpoint(s) and %d deployment(s) from %s",
                 len(endpoints), len(deployments), ", ".join(paths))

    async def _serve(self, store, ssl_context, ca_cert: str, ready: asyncio.Event | None) -> None:
        opts = self.options
        holder = RoutingTableHolder()
        router = RouterApp(RouterSettings(host=opts.host, port=opts.port, ssl_context=ssl_context), holder)
        controller_ref: list[Controller] = []
        backend = LocalProcessBackend(
            self.state.root, on_change=lambda: controller_ref and controller_ref[0].on_replica_change(),
            drain=router.wait_replica_idle)
        autoscaling = Autoscaling(router.take_utilization, registry=router.recorder.registry,
                                  on_change=lambda: controller_ref and controller_ref[0].notify())
        controller = Controller(store, backend, RoutingPublisher(holder), autoscaling=autoscaling)
        controller_ref.append(controller)
        scoring_url = f"https://{_local_name(opts.host)}:{opts.port}"
        api = AdminApi(store, controller, backend, admin_token=self.admin_token, scoring_url=scoring_url,
                       autoscaling=autoscaling, load=router.load)
        admin_app = web.Application(middlewares=[api.auth_middleware])
        admin_app.add_routes(router.admin_routes() + api.routes())
        admin_runner = web.AppRunner(admin_app, access_log=None, handle_signals=False)

        await backend.start()
        try:
            await router.start()
            await controller.start()
            await autoscaling.start()
            await admin_runner.setup()
            await web.TCPSite(admin_runner, opts.admin_host, opts.admin_port, reuse_address=True).start()
            admin_port = admin_runner.addresses[0][1]
            scoring_url = f"https://{_local_name(opts.host)}:{router.port}"
            api._scoring_url = scoring_url  # noqa: SLF001 (port 0 is known only now)
            self.state.write_gateway(GatewayInfo(
                admin_url=f"http://{_local_name(opts.admin_host)}:{admin_port}",
                admin_token=self.admin_token, scoring_url=scoring_url, ca_cert=ca_cert,
                pid=os.getpid()))
            log.info("scoregate serving on %s (admin http://%s:%d, state %s)", scoring_url,
                     _local_name(opts.admin_host), admin_port, self.state.root)
            if ready is not None:
                ready.set()
            await self._stop.wait()
            log.info("shutting down: draining in-flight requests (up to %gs)", opts.drain_timeout_s)
        finally:
            await router.drain(opts.drain_timeout_s)
            await autoscaling.close()
            await controller.close()
            await backend.close()
            await router.close()
            await admin_runner.cleanup()
            self.state.remove_gateway(os.getpid())
            log.info("stopped")


def run_serve(options: ServeOptions) -> int:
    """Run the gateway until SIGINT/SIGTERM; returns the process exit code."""

    async def main() -> int:
        gateway = EmbeddedGateway(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gateway.request_stop)
        try:
            await gateway.run()
        except StartupError as exc:
            log.error("%s", exc)
            return 2
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        return 0

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
