"""RouterApp: builds the data path from RouterSettings and runs its listener.

Lifecycle, as for every long-lived object here: start() binds and serves,
drain(timeout_s) stops accepting and lets in-flight requests finish, close() releases
the upstream pool. The control plane feeds it through the RoutingTableHolder and reads
it through the few methods under "for the control plane" below.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admission import Admission, UtilizationWindow
from .auth import KeyAuthenticator
from .balancing import InFlightCounter
from .balancing.ejection import OutlierEjector
from .balancing.least_outstanding import LeastOutstandingPicker
from .accesslog import AccessLog
from .auth_throttle import AuthThrottle
from .handlers import ScoringHandlers, aiohttp_not_found
from .listener import ConnectionLimits, Listener, ensure_open_files
from .mirroring import Mirror
from .pipeline import BodySettings, RetrySettings, ScoringPipeline
from .ratelimit import RateLimiter
from .recording import AccessLogCollector, DeploymentCollector, Recorder
from .routing_table import RoutingTable, RoutingTableHolder
from .tracing import otel_tracer
from .traffic import DeploymentPicker
from .upstream.forward import Forwarder
from .upstream.pool import UpstreamPool

log = logging.getLogger("scoregate.router")


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    ssl_context: ssl.SSLContext | None = None
    body: BodySettings = field(default_factory=BodySettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    # Admission queue bound per deployment = factor × replicas × slots per replica.
    queue_depth_factor: int = 2
    # Outlier ejection: consecutive failures, first back-off, longest back-off.
    ejection_failures: int = 3
    ejection_base_s: float = 2.0
    ejection_max_s: float = 60.0
    keepalive_timeout_s: float = 60.0
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Callers whose X-Forwarded-For is kept (CIDRs); everyone else's is replaced.
    trusted_proxies: tuple[str, ...] = ()
    max_response_bytes: int = 1 << 30
    # Idle upstream connections are closed by us before the replica would close them,
    # so a request is never written onto a connection the replica is closing.
    upstream_keepalive_s: float = 15.0
    # Endpoints also by host name: https://{endpoint}.{domain}/score
    domain: str | None = None
    # Client context for https replicas (router→replica mTLS); None: plain HTTP only.
    upstream_ssl_context: ssl.SSLContext | None = None
    # Access log: a path, "-" for stdout, or None; share of 2xx/3xx lines kept.
    access_log: str | None = None
    access_log_sample_rate: float = 1.0
    # An OpenTelemetry TracerProvider; None: the global one if the SDK set it up, else off.
    tracer_provider: object | None = None
    backlog: int = 1024
    # `--workers N`: N processes listen on the same port (SO_REUSEPORT) and each keeps
    # 1/N of every admission queue; their in-flight counts are shared (RouterApp in_flight).
    reuse_port: bool = False
    queue_share: int = 1


class RouterApp:
    def __init__(self, settings: RouterSettings, holder: RoutingTableHolder, *,
                 token_verifier=None, rng: random.Random | None = None,
                 extra_routes: list[web.RouteDef] | None = None,
                 in_flight: InFlightCounter | None = None, auth_throttle: AuthThrottle | None = None) -> None:
        self.settings = settings
        # Routes the control plane serves on the scoring port (e.g. batch job submission),
        # matched before the catch-all 404.
        self._extra_routes = list(extra_routes or [])
        # Failed logins per client; give the batch job routes among extra_routes the same
        # one, so that guesses on either path count together.
        self.auth_throttle = auth_throttle if auth_throttle is not None else AuthThrottle()
        self.holder = holder
        self.recorder = Recorder()
        # Shared with other processes under `--workers` (router/balancing/shared.py).
        self.in_flight = in_flight if in_flight is not None else InFlightCounter()
        self._pool = UpstreamPool(keepalive_timeout_s=settings.upstream_keepalive_s,
                                  ssl_context=settings.upstream_ssl_context)
        self.ejector = OutlierEjector(consecutive_failures=settings.ejection_failures,
                                      base_ejection_s=settings.ejection_base_s,
                                      max_ejection_s=settings.ejection_max_s)
        self.ejector.probe = self._probe_replica
        picker = LeastOutstandingPicker(rng)
        self.admission = Admission(
            holder, self.in_flight, picker, self.ejector, queue_depth_factor=settings.queue_depth_factor,
            queue_share=settings.queue_share, on_queue_wait=lambda key, s: self.recorder.queue_wait.labels(*key).observe(s))
        self._mirror = Mirror(self._pool, self.admission, self.recorder)
        self._forwarder = Forwarder(self._pool, max_body_bytes=settings.body.max_body_bytes,
                                    max_response_bytes=settings.max_response_bytes,
                                    on_resend=lambda e, d: self.recorder.resends.labels(e, d).inc())
        pipeline = ScoringPipeline(
            holder, KeyAuthenticator(token_verifier), RateLimiter(), DeploymentPicker(rng),
            self.admission, self.ejector, self.auth_throttle, self._mirror, self._forwarder,
            self.recorder, settings.body, settings.retry,
        )
        self.access_log = AccessLog(settings.access_log, sample_rate=settings.access_log_sample_rate)
        self._handlers = ScoringHandlers(pipeline, self.recorder, self.access_log, settings.domain,
                                         otel_tracer(settings.tracer_provider), settings.trusted_proxies)
        self.recorder.registry.register(DeploymentCollector(holder, self.admission, self.ejector))
        self.recorder.registry.register(AccessLogCollector(self.access_log))
        self._listener: Listener | None = None
        holder.subscribe(self._on_table_change)
        self.recorder.routing_version.set(holder.current.version)

    def _on_table_change(self, old: RoutingTable, new: RoutingTable) -> None:
        self.recorder.routing_version.set(new.version)
        for name, endpoint in old.endpoints.items():  # deleted endpoints and deployments
            if name not in new.endpoints:
                self.recorder.forget(name)
            else:
                for gone in endpoint.deployments.keys() - new.endpoints[name].deployments.keys():
                    self.recorder.forget(name, gone)
        self.ejector.forget({r.replica_id for e in new.endpoints.values()
                             for d in e.deployments.values() for r in d.replicas})

    async def _probe_replica(self, replica_id: str) -> bool:
        for endpoint in self.holder.current.endpoints.values():
            for deployment in endpoint.deployments.values():
                for replica in deployment.replicas:
                    if replica.replica_id == replica_id:
                        url = f"{replica.base_url}{replica.liveness_path}"
                        try:
                            async with asyncio.timeout(2.0):
                                async with self._pool.session.get(url) as response:
                                    await response.read()
                                    return response.status == 200
                        except (aiohttp.ClientError, OSError, TimeoutError):
                            return False
        return False

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._listener is None:
            raise RuntimeError("router is not listening")
        return self._listener.port

    async def start(self) -> None:
        # Callers, replica connections and files: leave room above max_connections.
        wanted = self.settings.limits.max_connections + 4096
        allowed = ensure_open_files(wanted)
        if allowed < wanted:
            log.warning("open-files limit is %d (hard limit), below the %d that max_connections=%d "
                        "needs: connections beyond it will be refused by the system", allowed, wanted,
                        self.settings.limits.max_connections)
        await self._pool.start()
        await self.access_log.start()
        listener = Listener(
            self._handlers.handle, host=self.settings.host, port=self.settings.port,
            ssl_context=self.settings.ssl_context, limits=self.settings.limits,
            keepalive_timeout_s=self.settings.keepalive_timeout_s, backlog=self.settings.backlog,
            extra_routes=self._extra_routes, not_found=aiohttp_not_found,
            client_max_size=self.settings.body.max_body_bytes, reuse_port=self.settings.reuse_port,
            on_refusal=lambda reason: self.recorder.connection_refusals.labels(reason).inc(),
            on_refusal_answered=self._handlers.record_refusal)
        await listener.start()
        self._listener = listener
        log.info("router listening on %s://%s:%d", "https" if self.settings.ssl_context else "http",
                 self.settings.host, self.port)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish within timeout_s, then cancel."""
        if self._listener is not None:
            await self._listener.drain(timeout_s)
            self._listener = None
        await self._mirror.drain(min(timeout_s, 5.0))

    async def close(self) -> None:
        if self._listener is not None:
            await self.drain(0)
        self._forwarder.close()
        await self.ejector.close()
        await self.access_log.close()
        await self._pool.close()

    # -- for the control plane -------------------------------------------------------
    def in_flight_for(self, replica_id: str) -> int:
        return self.in_flight.get(replica_id)

    async def wait_replica_idle(self, replica_id: str, timeout_s: float) -> bool:
        """Wait until no request of this gateway is in flight to a replica (bounded)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight.get(replica_id) > 0:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def take_utilization(self, endpoint: str, deployment: str) -> UtilizationWindow:
        return self.admission.take_window((endpoint, deployment))

    def load(self, endpoint: str, deployment: str) -> tuple[int, int]:
        """(in flight, queued) right now."""
        key = (endpoint, deployment)
        return self.admission.busy(key), self.admission.queued(key)

    # -- admin port ---------------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self._metrics),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
        ]

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.recorder.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        """Ready: listening, not draining, with a routing table. A drain answers 503 from its
        first moment (not when it ends), so a load balancer's health check stops sending
        new connections while the requests in flight finish."""
        listener = self._listener
        ready = listener is not None and not listener.draining and self.holder.current.version > 0
        return web.json_response({"ready": ready}, status=200 if ready else 503)
