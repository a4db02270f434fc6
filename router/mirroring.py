"""Mirror: send a copy of a request to a shadow deployment and throw the answer away.

Called by router.pipeline after the deployment is picked. The copy runs in a
background task that the caller never waits for. It takes a slot of the shadow
deployment only if one is free right now (router.admission.try_acquire): a copy never
queues, so it can never delay live requests of that deployment. Copies in flight are
bounded, extra copies are dropped and counted, each copy has the shadow deployment's
own timeout, and every failure is swallowed into a metric. Only requests whose body was
read into memory can be mirrored (large streamed bodies are not copied).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp

from .admission import Admission
from .context import RequestContext
from .recording import Recorder
from .routing_table import DeploymentRoute
from .upstream.pool import UpstreamPool

log = logging.getLogger("scoregate.router.mirror")


class Mirror:
    def __init__(self, pool: UpstreamPool, admission: Admission, recorder: Recorder, *,
                 max_in_flight: int = 64) -> None:
        self._pool = pool
        self._admission = admission
        self._recorder = recorder
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task] = set()

    def send_copy(self, ctx: RequestContext, deployment: DeploymentRoute, method: str,
                  path: str | None, headers: Mapping[str, str], body: bytes) -> None:
        endpoint = ctx.endpoint or "-"
        key = (endpoint, deployment.name)
        replica = None
        if len(self._tasks) < self._max_in_flight:
            replica = self._admission.try_acquire(key, deployment)
        if replica is None:
            self._recorder.mirror.labels(endpoint, deployment.name, "dropped").inc()
            return
        url = f"{replica.base_url}{path or replica.scoring_path}"
        timeout_s = deployment.request_settings.request_timeout_ms / 1000
        task = asyncio.get_running_loop().create_task(
            self._send(key, replica.replica_id, method, url, headers, body, timeout_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key, replica_id, method, url, headers, body, timeout_s) -> None:
        outcome = "failed"
        try:
            async with asyncio.timeout(timeout_s):
                async with self._pool.session.request(method, url, headers=headers, data=body) as response:
                    await response.read()
                    outcome = "sent" if response.status < 300 else "failed"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("mirror copy to %s failed: %r", key, exc)
        finally:
            self._admission.release(key, replica_id)
            self._recorder.mirror.labels(key[0], key[1], outcome).inc()

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in set(self._tasks):
            task.cancel()
