"""GatewayStatus: the snapshot source the composition root owns.

It keeps the LiveSeries of its gateway filled by sampling the metrics registry once a
second in the background (so the charts already have a history when someone opens
the page), builds snapshots on request, and serves `GET /api/v1/status` for the CLI
(`scoregate top`). The route relies on the admin port's bearer-token middleware for
paths under /api/, and checks the token itself as well, so mounting it elsewhere by
mistake does not open it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from aiohttp import web

from .live import LiveSeries, sample_registry
from .snapshot import build_snapshot
from ..tasks import cancel_and_wait

log = logging.getLogger("scoregate.status")


class GatewayStatus:
    def __init__(self, store, controller, backend, *, admin_token: str, router=None, autoscaling=None,
                 batch=None, registry=None, scoring_url: str = "", sample_interval_s: float = 1.0,
                 window_s: float = 120.0) -> None:
        self._store, self._controller, self._backend = store, controller, backend
        self._router, self._autoscaling, self._batch = router, autoscaling, batch
        self._registry = registry if registry is not None else (router.recorder.registry if router else None)
        self._token = admin_token.encode()
        self.scoring_url = scoring_url  # set again by the gateway once its port is known
        self.live = LiveSeries(window_s, sample_interval_s)
        self._task: asyncio.Task | None = None

    async def snapshot(self) -> dict:
        return await build_snapshot(self._store, self._controller, self._backend, router=self._router,
                                    autoscaling=self._autoscaling, batch=self._batch, live=self.live,
                                    registry=self._registry, scoring_url=self.scoring_url)

    def sample(self) -> None:
        if self._registry is not None:
            self.live.add(sample_registry(self._registry, self.live.clock()))

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status-sampler")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a broken collector must not stop the sampler for good
                log.exception("sampling metrics for the status page failed")
            await asyncio.sleep(self.live.min_interval_s)

    # -- HTTP ---------------------------------------------------------------------------------
    def api_routes(self) -> list[web.RouteDef]:
        """`GET /api/v1/status` (JSON snapshot), for the admin port's /api/ tree."""
        return [web.get("/api/v1/status", self._api_status)]

    async def _api_status(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        given = header[7:].encode() if header[:7].lower() == "bearer " else b""
        if not hmac.compare_digest(given, self._token):
            return web.json_response({"code": "Unauthorized", "message": "missing or wrong admin token"},
                                     status=401)
        return web.json_response(await self.snapshot(), headers={"Cache-Control": "no-store"})
