"""RouterApp: builds the data path from RouterSettings and runs its listener.

Lifecycle, as for every long-lived object here: start() binds and serves,
drain(timeout_s) stops accepting and lets in-flight requests finish, close() releases
the upstream pool. The control plane feeds it through the RoutingTableHolder only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import KeyAuthenticator
from .balancing import InFlightCounter
from .balancing.least_outstanding import LeastOutstandingPicker
from .handlers import ScoringHandlers
from .mirroring import Mirror
from .pipeline import BodySettings, ScoringPipeline
from .recording import Recorder
from .routing_table import RoutingTableHolder
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
    keepalive_timeout_s: float = 75.0
    max_line_size: int = 8190
    max_field_size: int = 8190
    backlog: int = 1024


class RouterApp:
    def __init__(self, settings: RouterSettings, holder: RoutingTableHolder, *,
                 token_verifier=None, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.holder = holder
        self.recorder = Recorder()
        self.in_flight = InFlightCounter()
        self._pool = UpstreamPool()
        picker = LeastOutstandingPicker(rng)
        self._mirror = Mirror(self._pool, picker, self.in_flight, self.recorder)
        pipeline = ScoringPipeline(
            holder,
            KeyAuthenticator(token_verifier),
            DeploymentPicker(rng),
            picker,
            self.in_flight,
            self._mirror,
            Forwarder(self._pool, max_body_bytes=settings.body.max_body_bytes),
            settings.body,
        )
        self._handlers = ScoringHandlers(pipeline, self.recorder)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        holder.subscribe(lambda _old, new: self.recorder.routing_version.set(new.version))

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("router is not listening")
        return self._runner.addresses[0][1]

    @property
    def started(self) -> bool:
        return self._site is not None

    async def start(self) -> None:
        await self._pool.start()
        app = web.Application(client_max_size=self.settings.body.max_body_bytes)
        app.add_routes(self._handlers.routes())
        self._runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.settings.keepalive_timeout_s,
            max_line_size=self.settings.max_line_size,
            max_field_size=self.settings.max_field_size,
            handle_signals=False,
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port,
            ssl_context=self.settings.ssl_context, backlog=self.settings.backlog,
            reuse_address=True,
        )
        await self._site.start()
        log.info("router listening on %s://%s:%d", "https" if self.settings.ssl_context else "http",
                 self.settings.host, self.port)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish within timeout_s, then cancel."""
        if self._runner is not None:
            # AppRunner.cleanup: stop listening, ask keep-alive connections to close,
            # wait for handlers up to shutdown_timeout, cancel the rest.
            self._runner._shutdown_timeout = timeout_s  # noqa: SLF001 (no public setter)
            await self._runner.cleanup()
            self._runner = None
            self._site = None
        await self._mirror.drain(min(timeout_s, 5.0))

    async def close(self) -> None:
        if self._runner is not None:
            await self.drain(0)
        await self._pool.close()

    # -- admin port ---------------------------------------------------------------
    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/metrics", self._metrics),
            web.get("/healthz", self._healthz),
            web.get("/readyz", self._readyz),
        ]

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.recorder.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self.started and self.holder.current.version > 0
        return web.json_response({"ready": ready}, status=200 if ready else 503)
