"""Outlier ejection: take a failing replica out of rotation, probe it back in.

What it does: counts consecutive connection failures, resets and timeouts per replica.
At `consecutive_failures` the replica is ejected for a back-off (doubling from
`base_ejection_s` up to `max_ejection_s`); when the back-off ends it is probed
(`GET` its liveness path) and re-admitted on success, or ejected again for longer.
Intent: one dead or wedged replica must not keep receiving its share of requests while
the controller notices and replaces it. Admission ignores ejection when every replica of
a deployment is ejected (better to try than to refuse everything).
Inputs: outcomes reported by router.pipeline; the probe uses the shared upstream pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

log = logging.getLogger("scoregate.router.ejection")

Probe = Callable[[str], Awaitable[bool]]  # replica_id -> healthy?


class _Health:
    __slots__ = ("failures", "ejections", "ejected_until", "probe_task")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.probe_task: asyncio.Task | None = None


class OutlierEjector:
    def __init__(self, *, consecutive_failures: int = 3, base_ejection_s: float = 2.0,
                 max_ejection_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self._clock = clock
        self._health: dict[str, _Health] = {}
        # The replicas ejected now (read-only outside): router.admission skips the
        # per-replica check while it is empty, the usual case.
        self.ejected_ids: set[str] = set()
        self.probe: Probe | None = None
        self.on_readmitted: Callable[[str], None] = lambda _rid: None
        self.on_ejected: Callable[[str, str], None] = lambda _rid, _why: None

    def is_ejected(self, replica_id: str) -> bool:
        return replica_id in self.ejected_ids

    def ejected(self) -> list[str]:
        return list(self.ejected_ids)

    def on_success(self, replica_id: str) -> None:
        health = self._health.get(replica_id)
        if health is not None and health.ejected_until == 0:
            health.failures = 0
            health.ejections = 0

    def on_failure(self, replica_id: str, kind: str) -> bool:
        """Record a failure; True when this one ejects the replica."""
        health = self._health.setdefault(replica_id, _Health())
        if health.ejected_until > 0:
            return False
        health.failures += 1
        if health.failures < self.consecutive_failures:
            return False
        self._eject(replica_id, health, kind)
        return True

    def _eject(self, replica_id: str, health: _Health, why: str) -> None:
        backoff = min(self.max_ejection_s, self.base_ejection_s * (2 ** health.ejections))
        health.ejections += 1
        health.ejected_until = self._clock() + backoff
        self.ejected_ids.add(replica_id)
        log.warning("replica %s ejected for %.1fs after %d consecutive failures (%s)",
                    replica_id, backoff, health.failures, why)
        self.on_ejected(replica_id, why)
        if self.probe is not None:
            health.probe_task = asyncio.get_running_loop().create_task(
                self._probe_after(replica_id, health, backoff))

    async def _probe_after(self, replica_id: str, health: _Health, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        healthy = False
        try:
            healthy = await self.probe(replica_id) if self.probe else True
        except Exception:  # a probe must never take the router down
            log.exception("probe of replica %s failed", replica_id)
        health.probe_task = None
        if self._health.get(replica_id) is not health:
            return  # forgotten meanwhile
        if healthy:
            health.ejected_until = 0.0
            health.failures = 0
            self.ejected_ids.discard(replica_id)
            log.info("replica %s re-admitted after a successful probe", replica_id)
            self.on_readmitted(replica_id)
        else:
            self._eject(replica_id, health, "probe failed")

    def forget(self, keep: set[str]) -> None:
        """Drop state of replicas that left the routing table."""
        for replica_id in [rid for rid in self._health if rid not in keep]:
            health = self._health.pop(replica_id)
            self.ejected_ids.discard(replica_id)
            if health.probe_task is not None:
                health.probe_task.cancel()

    async def close(self) -> None:
        tasks = [h.probe_task for h in self._health.values() if h.probe_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
