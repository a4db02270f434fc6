"""LeaseElector: leader election on a coordination.k8s.io/v1 Lease.

The algorithm of client-go's leaderelection, in small: the holder renews the Lease every
`retry_period_s`; a candidate takes over once it has seen the same record, unrenewed, for
`lease_duration_s` — measured on its own monotonic clock from when it observed the
record, so clocks of different machines need not agree. Every write is a replace with the
resourceVersion read, so of two candidates racing for an expired Lease exactly one wins
(the other gets 409 Conflict). A holder that cannot renew for `renew_deadline_s`, or that
sees another holder, steps down (`lost` is set). release() on a graceful exit empties the
holder so a successor takes over at once instead of after the lease duration.
Used by the controller Deployment (one active replica) and, later, the router coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

from .api import LEASES, KubeApi, status_of

log = logging.getLogger("scoregate.kubernetes.lease")


def _micro_time() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, api: KubeApi, namespace: str, name: str, identity: str, *,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self._api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.lease_duration_s, self.renew_deadline_s, self.retry_period_s = (
            lease_duration_s, renew_deadline_s, retry_period_s)
        self._clock = clock
        self._observed: tuple | None = None
        self._observed_at = 0.0
        self.is_leader = False
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self.transitions_seen = 0

    async def run(self) -> None:
        """Campaign, then renew; returns when leadership is lost (cancel to stop)."""
        last_renewal = self._clock()
        while True:
            try:
                held, other_holder = await self.try_acquire_or_renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                held, other_holder = False, False
            now = self._clock()
            if held:
                last_renewal = now
                if not self.is_leader:
                    self.is_leader = True
                    self.elected.set()
                    log.info("%s now leads %s/%s", self.identity, self.namespace, self.name)
            elif self.is_leader and (other_holder or now - last_renewal > self.renew_deadline_s):
                self.is_leader = False
                self.lost.set()
                log.warning("%s lost the lease %s/%s", self.identity, self.namespace, self.name)
                return
            await asyncio.sleep(self.retry_period_s)

    async def try_acquire_or_renew(self) -> tuple[bool, bool]:
        """(we hold the lease now, someone else holds it validly)."""
        try:
            lease = await self._api.get(LEASES, self.namespace, self.name)
        except Exception as exc:
            if status_of(exc) != 404:
                raise
            return await self._write(None), False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        expired = self._observed_at + float(spec.get("leaseDurationSeconds") or self.lease_duration_s) <= self._clock()
        if holder and holder != self.identity and not expired:
            return False, True
        return await self._write(lease), False

    async def _write(self, lease: dict | None) -> bool:
        now = _micro_time()
        spec = dict((lease or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.identity
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_duration_s), renewTime=now)
        if taking_over:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
                await self._api.create(LEASES, self.namespace, body)
            else:
                await self._api.replace(LEASES, self.namespace, self.name, {**lease, "spec": spec})
        except Exception as exc:
            if status_of(exc) == 409:  # another candidate wrote first
                return False
            raise
        if taking_over:
            self.transitions_seen += 1
        return True

    async def release(self) -> None:
        """Give the lease up now (graceful shutdown), so a successor need not wait it out."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = await self._api.get(LEASES, self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time()}
                await self._api.replace(LEASES, self.namespace, self.name, {**lease, "spec": spec})
        except Exception as exc:
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)


async def run_elected(api: KubeApi, *, enabled: bool, namespace: str, lease_name: str,
                      identity: str | None, stop: asyncio.Event,
                      body: Callable[["LeaseElector | None"], Awaitable[None]], name: str) -> None:
    """Campaign for the Lease (when `enabled`), run `body(elector)` once it is ours, and on
    the way out stop campaigning and release it so that a successor takes over at once.
    Returns without running `body` when `stop` is set before the Lease is won. The
    controller and the batch runner both live this way (one active copy per cluster)."""
    elector, campaign = None, None
    try:
        if enabled:
            elector = LeaseElector(api, namespace, lease_name,
                                   identity or f"{socket.gethostname()}-{os.getpid()}")
            campaign = asyncio.get_running_loop().create_task(elector.run(), name=name)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(elector.elected.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits:
                waiter.cancel()
            if not elector.is_leader:
                return
        await body(elector)
    finally:
        if campaign is not None:
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
        if elector is not None:
            await elector.release()


async def until_stopped(stop: asyncio.Event, elector: "LeaseElector | None") -> None:
    """Wait until `stop` is set or, when elected, the Lease is lost."""
    waits = [asyncio.ensure_future(stop.wait())]
    if elector is not None:
        waits.append(asyncio.ensure_future(elector.lost.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()
