"""Mirror: send a copy of a request to a shadow deployment and throw the answer away.

Called by router.pipeline after the deployment is picked. The copy runs in a
background task that the caller never waits for; the number of copies in flight is
bounded (extra copies are dropped and counted), each copy has the shadow deployment's
own timeout, and every failure is swallowed into a metric. Only requests whose body was
read into memory can be mirrored (large streamed bodies are not copied).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from .balancing import InFlightCounter, ReplicaPicker
from .context import RequestContext
from .recording import Recorder
from .routing_table import DeploymentRoute
from .upstream.pool import UpstreamPool

log = logging.getLogger("scoregate.router.mirror")


class Mirror:
    def __init__(
        self,
        pool: UpstreamPool,
        picker: ReplicaPicker,
        in_flight: InFlightCounter,
        recorder: Recorder,
        *,
        max_in_flight: int = 64,
    ) -> None:
        self._pool = pool
        self._picker = picker
        self._in_flight = in_flight
        self._recorder = recorder
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task] = set()

    def send_copy(
        self,
        ctx: RequestContext,
        deployment: DeploymentRoute,
        method: str,
        path: str | None,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        label = self._recorder.mirror.labels(ctx.endpoint or "-", deployment.name, "dropped")
        if not deployment.replicas or len(self._tasks) >= self._max_in_flight:
            label.inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._send(ctx.endpoint or "-", deployment, method, path, headers, body)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, endpoint, deployment, method, path, headers, body) -> None:
        replica = self._picker.choose(deployment.replicas, self._in_flight)
        self._in_flight.acquire(replica.replica_id)
        outcome = "failed"
        try:
            async with asyncio.timeout(deployment.request_settings.request_timeout_ms / 1000):
                async with self._pool.session.request(
                    method, f"http://{replica.host}:{replica.port}{path or replica.scoring_path}", headers=headers, data=body
                ) as response:
                    await response.read()
                    outcome = "sent" if response.status < 300 else "failed"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("mirror copy to %s failed: %r", deployment.name, exc)
        finally:
            self._in_flight.release(replica.replica_id)
            self._recorder.mirror.labels(endpoint, deployment.name, outcome).inc()

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in set(self._tasks):
            task.cancel()
