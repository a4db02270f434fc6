"""`scoregate router --backend kubernetes`: the composition root of one router replica.

Builds, in order: API client (in-cluster or --kubeconfig) → TLS (the Secret's certificate,
or a development one; session ticket keys shared through a Secret) → RouterApp (router/,
unchanged) → ClusterDiscovery (routing state, keys, EndpointSlices) → RouterTables →
Coordination (report, coordinator election, slot shares) → the scoring listener and the
admin port (/metrics, /healthz, /readyz, /coordination). Shutdown: stop accepting and
drain in-flight requests, *then* hand the coordinator Lease over and withdraw the report
(so the slots of requests still running are not dealt out early), then stop the watches.
serving/cli.py wires `add_arguments` and `settings_from_args` to the CLI verb;
`KubernetesRouter` is the same thing as an object (tests use it to reach the ports and
parts).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
from dataclasses import dataclass

from aiohttp import web

from router import RouterApp, RouterSettings, RoutingTableHolder
from router.aiohttp_hardening import app_runner
from tls import TLSMetrics

from .api import KubeApi, load_api_client
from .certificates import SecretCertificate, development_tls, parse_secret_ref
from .coordination import Coordination
from .discovery import ClusterDiscovery
from .routing import RouterTables, deployment_key
from .shares import Report
from .ticket_keys import DEFAULT_SECRET as DEFAULT_TICKET_KEYS_SECRET
from .ticket_keys import SharedTicketKeys

log = logging.getLogger("scoregate.kubernetes.router")


@dataclass(frozen=True)
class KubernetesRouterSettings:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] | None = ("default",)  # None: all namespaces
    host: str = "0.0.0.0"
    port: int = 8443
    admin_host: str = "0.0.0.0"
    admin_port: int = 9090
    tls_secret: str | None = None  # NAME (in coordination_namespace) or NAMESPACE/NAME
    dev_cert_dir: str | None = None
    # NAME (in coordination_namespace) or NAMESPACE/NAME; None: each router its own keys
    ticket_keys_secret: str | None = DEFAULT_TICKET_KEYS_SECRET
    coordination: bool = True
    coordination_namespace: str = "scoregate-system"
    identity: str = ""
    report_interval_s: float = 1.0
    member_timeout_s: float = 10.0
    stats_interval_s: float = 5.0
    lease_duration_s: float = 6.0
    renew_deadline_s: float = 4.0
    retry_period_s: float = 1.0
    settle_s: float = 1.0
    drain_timeout_s: float = 30.0
    domain: str | None = None
    access_log: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    namespaces = parser.add_mutually_exclusive_group()  # both given: which one meant?
    namespaces.add_argument("--namespace", action="append", dest="namespaces", default=None,
                            help="namespace to route for (repeatable; default: default)")
    namespaces.add_argument("--all-namespaces", action="store_true", help="route for every namespace")
    parser.add_argument("--host", default="0.0.0.0", help="scoring listener address")
    parser.add_argument("--port", type=int, default=8443, help="scoring listener port (HTTPS)")
    parser.add_argument("--admin-host", default="0.0.0.0")
    parser.add_argument("--admin-port", type=int, default=9090, help="/metrics, /healthz, /readyz, /coordination")
    parser.add_argument("--tls-secret", default=None,
                        help="kubernetes.io/tls Secret, NAME or NAMESPACE/NAME (default: a development certificate)")
    parser.add_argument("--tls-ticket-keys-secret", default=DEFAULT_TICKET_KEYS_SECRET,
                        help="Secret with the TLS session ticket keys all routers share, NAME or NAMESPACE/NAME; "
                             "created if missing (default: %(default)s)")
    parser.add_argument("--no-shared-ticket-keys", action="store_true",
                        help="each router keeps its own ticket keys (a resumption on another router is a full "
                             "handshake)")
    parser.add_argument("--dev-cert-dir", default=None, help="where the development certificate is kept")
    parser.add_argument("--no-coordination", action="store_true",
                        help="one router only: enforce the full per-replica limits locally")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "scoregate-system"),
                        help="namespace of the coordinator Lease, the reports and the shares ConfigMap")
    parser.add_argument("--identity", default=os.environ.get("POD_NAME", ""), help="this router's name")
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    timing = parser.add_argument_group("coordination timing (seconds; the defaults suit a cluster)")
    defaults = KubernetesRouterSettings()
    timing.add_argument("--report-interval", type=float, default=defaults.report_interval_s,
                        help="how often this router's report is written when it changed")
    timing.add_argument("--member-timeout", type=float, default=defaults.member_timeout_s,
                        help="a router whose report is not renewed for this long is gone")
    timing.add_argument("--lease-duration", type=int, default=int(defaults.lease_duration_s),
                        help="the coordinator Lease: taken over after this long unrenewed (whole seconds, "
                             "as the Lease's leaseDurationSeconds)")
    timing.add_argument("--lease-renew-deadline", type=float, default=defaults.renew_deadline_s,
                        help="a coordinator that cannot renew for this long steps down")
    timing.add_argument("--lease-retry-period", type=float, default=defaults.retry_period_s,
                        help="how often the Lease is renewed or tried")
    parser.add_argument("--domain", default=None, help="also route https://{endpoint}.{domain}/score")
    parser.add_argument("--access-log", default=None, help="a path, or - for stdout")


def settings_from_args(args: argparse.Namespace) -> KubernetesRouterSettings:
    namespaces = None if args.all_namespaces else tuple(args.namespaces or ("default",))
    if not 0 < args.lease_retry_period < args.lease_renew_deadline < args.lease_duration:
        raise ValueError("need 0 < --lease-retry-period < --lease-renew-deadline < --lease-duration")
    if not 0 < args.report_interval < args.member_timeout:
        raise ValueError("need 0 < --report-interval < --member-timeout")
    return KubernetesRouterSettings(
        kubeconfig=args.kubeconfig, context=args.context, namespaces=namespaces, host=args.host, port=args.port,
        admin_host=args.admin_host, admin_port=args.admin_port, tls_secret=args.tls_secret,
        dev_cert_dir=args.dev_cert_dir,
        ticket_keys_secret=None if args.no_shared_ticket_keys else args.tls_ticket_keys_secret,
        coordination=not args.no_coordination,
        coordination_namespace=args.lease_namespace, identity=args.identity, drain_timeout_s=args.drain_timeout,
        domain=args.domain, access_log=args.access_log, report_interval_s=args.report_interval,
        member_timeout_s=args.member_timeout, lease_duration_s=args.lease_duration,
        renew_deadline_s=args.lease_renew_deadline, retry_period_s=args.lease_retry_period)


class ReportBuilder:
    """This router's report: demand per deployment and slots per replica, from its
    admission state. A replica stays in it while requests to it are in flight, even after
    it left this router's table (a slow request can outlive the settle time), so the
    coordinator never deals out a slot that is still in use."""

    def __init__(self, router: RouterApp, tables: RouterTables) -> None:
        self._router, self._tables = router, tables
        self._lingering: dict[str, set[str]] = {}  # key -> replicas with requests in flight

    def __call__(self, seen: int) -> Report:
        demand, level, slots = {}, {}, {}
        allowed = self._tables.allowed()
        for key in sorted(set(allowed) | set(self._lingering)):
            endpoint, _, deployment = key.partition("/")
            busy, queued = self._router.load(endpoint, deployment)
            average = self._router.take_utilization(endpoint, deployment).average_level
            demand[key], level[key] = max(float(busy + queued), average), average
            mine = allowed.get(key, {})
            slots[key] = {r: (mine.get(r, 0), self._router.in_flight_for(r))
                          for r in set(mine) | self._lingering.get(key, set())}
            self._lingering[key] = {r for r, (_, in_flight) in slots[key].items() if in_flight}
            if not self._lingering[key]:
                del self._lingering[key]
        return Report(seen, demand, level, slots)


class KubernetesRouter:
    def __init__(self, settings: KubernetesRouterSettings) -> None:
        self.settings = settings
        self.identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.api: KubeApi | None = None
        self.router: RouterApp | None = None
        self.discovery: ClusterDiscovery | None = None
        self.tables: RouterTables | None = None
        self.coordination: Coordination | None = None
        self.certificate: SecretCertificate | None = None
        self.ticket_keys: SharedTicketKeys | None = None
        self.server_tls = None
        self.ca_cert: str | None = None  # the development CA, when serving a development certificate
        self._admin: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self.router.port

    @property
    def admin_port(self) -> int:
        return self._admin.addresses[0][1]

    async def start(self) -> None:
        s = self.settings
        self.api = KubeApi(await load_api_client(s.kubeconfig, s.context))
        if s.tls_secret:
            self.certificate = SecretCertificate(self.api, *parse_secret_ref(s.tls_secret, s.coordination_namespace))
            self.server_tls = await self.certificate.start()
        else:
            self.server_tls, self.ca_cert = await development_tls(s.dev_cert_dir)
        if s.ticket_keys_secret:
            self.ticket_keys = SharedTicketKeys(self.api, self.server_tls.context,
                                                *parse_secret_ref(s.ticket_keys_secret, s.coordination_namespace,
                                                                  "--tls-ticket-keys-secret"))
            await self.ticket_keys.start()
        holder = RoutingTableHolder()
        self.tables = RouterTables(holder, self.identity, settle_s=s.settle_s)
        self.discovery = ClusterDiscovery(self.api, namespaces=s.namespaces)
        self.router = RouterApp(RouterSettings(host=s.host, port=s.port, ssl_context=self.server_tls.context,
                                               domain=s.domain, access_log=s.access_log),
                                holder, token_verifier=self.discovery.verify_token)
        # expiry, reloads and handshakes on /metrics, as `scoregate serve` reports them
        self.server_tls.attach_metrics(TLSMetrics(self.router.recorder.registry))
        self.discovery.on_change = lambda: self.tables.update(view=self.discovery.view)
        await self.discovery.start()
        if s.coordination:
            self.coordination = Coordination(
                self.api, s.coordination_namespace, self.identity, self.tables,
                report=ReportBuilder(self.router, self.tables), deployments=self._deployments,
                interval_s=s.report_interval_s, member_timeout_s=s.member_timeout_s,
                stats_interval_s=s.stats_interval_s, lease_duration_s=s.lease_duration_s,
                renew_deadline_s=s.renew_deadline_s, retry_period_s=s.retry_period_s)
            await self.coordination.start()
        self.tables.update()
        await self.router.start()
        admin = web.Application()
        admin.add_routes(self.router.admin_routes() + [web.get("/coordination", self._coordination_status)])
        self._admin = app_runner(admin, access_log=None, handle_signals=False)
        await self._admin.setup()
        await web.TCPSite(self._admin, s.admin_host, s.admin_port, reuse_address=True).start()
        log.info("router %s serving %s on port %d (admin %d)", self.identity,
                 ", ".join(s.namespaces) if s.namespaces else "all namespaces", self.port, self.admin_port)

    def _deployments(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """What the coordinator deals out: each deployment's limit and ready replicas."""
        view = self.discovery.view
        ready: dict[str, list[str]] = {}
        for replica in view.replicas:
            ready.setdefault(deployment_key(replica.endpoint, replica.deployment), []).append(replica.replica_id)
        return {deployment_key(d.endpoint_name, d.name): (d.request_settings.max_concurrent_requests_per_instance,
                                                          tuple(sorted(ready.get(deployment_key(d.endpoint_name,
                                                                                                d.name), []))))
                for d in view.deployments}

    async def _coordination_status(self, _request: web.Request) -> web.Response:
        doc = self.tables.doc
        body = self.coordination.status() if self.coordination else {"identity": self.identity, "coordinator": False}
        body["shares"] = {k: d.to_dict() for k, d in doc.deployments.items()} if doc else {}
        return web.json_response(body)

    async def close(self, graceful: bool = True) -> None:
        """Drain, then leave the coordination, then stop watching. graceful=False stops as
        a crash would look to the others (no Lease hand-over, report left to expire)."""
        if self.router is not None:
            await self.router.drain(self.settings.drain_timeout_s if graceful else 0)
        if self._admin is not None:
            await self._admin.cleanup()
        if self.coordination is not None:
            await self.coordination.close(graceful)
        if self.discovery is not None:
            await self.discovery.close()
        if self.router is not None:
            await self.router.close()
        if self.ticket_keys is not None:
            await self.ticket_keys.close()
        if self.certificate is not None:
            await self.certificate.close()
        elif self.server_tls is not None:
            await self.server_tls.close()
        if self.api is not None:
            await self.api.close()


async def run_router(settings: KubernetesRouterSettings, stop: asyncio.Event | None = None,
                     serving: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set; then shut down in order. `serving` is set once the
    router listens."""
    stop = stop or asyncio.Event()
    router = KubernetesRouter(settings)
    try:
        await router.start()
        if serving is not None:
            serving.set()
        await stop.wait()
    finally:
        await router.close()
