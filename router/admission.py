"""Admit: give a request a replica slot now, or a place in a bounded FIFO queue.

Sits between router.traffic (which picked the deployment) and router.upstream. Per
deployment (from its `request_settings`):
- no replica ever has more than `max_concurrent_requests_per_instance` requests in
  flight from this gateway;
- a request that finds every slot busy waits in the deployment's FIFO queue for at most
  `max_queue_wait_ms`; the queue holds at most `queue_depth_factor` × replicas × slots
  requests. Full queue or wait over → 429, and the request never reaches a model;
- no routable replica → 503, also for the requests already queued when the last replica
  (or the deployment) leaves the routing table: they are answered at once.
A freed slot is handed straight to the oldest waiter (no barging by new arrivals). A
waiter that is a retry (its connection to a replica failed) is handed only a slot of a
replica it has not tried, while the deployment has one; a slot it cannot take goes to the
next waiter, and it keeps its place. The bookkeeping is synchronous: nothing awaits while
the counts are half updated.

It also integrates, per deployment, the number of requests in flight plus queued over
time, so the autoscaler can read an average utilization for each polling interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .balancing import InFlightCounter, ReplicaPicker
from .balancing.ejection import OutlierEjector
from .errors import NoReadyReplica, TooManyRequests
from .routing_table import DeploymentRoute, Replica, RoutingTable, RoutingTableHolder

Key = tuple[str, str]  # (endpoint, deployment)


def queue_id(key: Key) -> str:
    """A deployment queue's name among the shared counts' ids (replica ids have no '/')."""
    return f"queue:{key[0]}/{key[1]}"


class QueueFull(TooManyRequests):
    code = "QueueFull"


class QueueWaitTimeout(TooManyRequests):
    code = "QueueWaitTimeout"


@dataclass(frozen=True, slots=True)
class UtilizationWindow:
    """Average (in flight + queued) over a window, and the capacity it is measured against."""

    average_level: float
    replicas: int
    slots_per_replica: int
    window_s: float

    @property
    def utilization(self) -> float:
        """(busy + queued) / (replicas × slots); with 0 replicas, demand itself."""
        capacity = self.replicas * self.slots_per_replica
        return self.average_level / capacity if capacity else self.average_level


class _DeploymentState:
    __slots__ = ("waiters", "since", "tried", "busy", "level_integral", "last_change", "window_start",
                 "queue_id")

    def __init__(self, now: float, queue_id: str) -> None:
        self.waiters: deque[asyncio.Future] = deque()
        self.since: dict[asyncio.Future, int] = {}  # waiter → when it started waiting (monotonic ns)
        self.tried: dict[asyncio.Future, frozenset[str]] = {}  # retrying waiter → replicas it tried
        self.queue_id = queue_id  # the queue's name in shared counts (`--workers`)
        self.busy = 0
        self.level_integral = 0.0
        self.last_change = now
        self.window_start = now

    def level(self) -> int:
        return self.busy + len(self.waiters)


class Admission:
    def __init__(self, holder: RoutingTableHolder, in_flight: InFlightCounter, picker: ReplicaPicker,
                 ejector: OutlierEjector, *, queue_depth_factor: int = 2, queue_share: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 on_queue_wait: Callable[[Key, float], None] | None = None) -> None:
        self._holder = holder
        self._in_flight = in_flight
        self._picker = picker
        self._ejector = ejector
        self._queue_depth_factor = queue_depth_factor
        # With N processes admitting for the same replicas (`--workers N`), each holds 1/N
        # of the queue, so together they queue no more than one process would.
        self._queue_share = max(1, queue_share)
        self._clock = clock
        self._on_queue_wait = on_queue_wait
        self._states: dict[Key, _DeploymentState] = {}
        self._poll: asyncio.TimerHandle | None = None
        holder.subscribe(self._on_table_change)
        ejector.on_readmitted = self._on_readmitted

    # -- bookkeeping (synchronous) ---------------------------------------------------------
    def _state(self, key: Key) -> _DeploymentState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _DeploymentState(self._clock(), queue_id(key))
        return state

    def _account(self, state: _DeploymentState) -> None:
        now = self._clock()
        state.level_integral += (state.busy + len(state.waiters)) * (now - state.last_change)  # level()
        state.last_change = now

    def candidates(self, deployment: DeploymentRoute, exclude: Iterable[str] = ()) -> Sequence[Replica]:
        """Routable replicas: not ejected (unless all are: then all), not excluded."""
        replicas = deployment.replicas
        if not exclude and not self._ejector.ejected_ids:
            return replicas  # the usual case: nothing to leave out
        if exclude:
            excluded = set(exclude)
            replicas = [r for r in replicas if r.replica_id not in excluded]
        is_ejected = self._ejector.is_ejected
        healthy = [r for r in replicas if not is_ejected(r.replica_id)]
        return healthy or list(replicas)

    def _take(self, state: _DeploymentState, deployment: DeploymentRoute,
              candidates: Sequence[Replica]) -> Replica | None:
        """A slot on the least busy candidate that has one (counted at once), or None."""
        self._account(state)
        replica = self._in_flight.take_free(
            candidates, deployment.request_settings.max_concurrent_requests_per_instance, self._picker)
        if replica is not None:
            state.busy += 1
        return replica

    def try_acquire(self, key: Key, deployment: DeploymentRoute, exclude: Iterable[str] = (),
                    candidates: Sequence[Replica] | None = None) -> Replica | None:
        """A free slot now, or None; never queues (used for mirrored copies too)."""
        state = self._states.get(key) or self._state(key)
        if state.waiters:
            return None
        if self._in_flight.shared and self._waiting_elsewhere(state, deployment, None):
            return None  # no barging past the callers other processes have queued
        if candidates is None:
            candidates = self.candidates(deployment, exclude)
        return self._take(state, deployment, candidates)

    # -- fairness across processes (`--workers`) -----------------------------------------
    # Each process publishes when the oldest request in its queue started waiting; a
    # freed slot goes to whichever process has the oldest waiter (found by its poll),
    # so one process's queue never keeps every slot while another's starves. A published
    # time older than the longest possible wait (plus a second) is a stuck process's:
    # ignored.
    def _waiting_elsewhere(self, state: _DeploymentState, deployment: DeploymentRoute,
                           own_since: int | None) -> bool:
        """True when another process has a waiter older than ours (any waiter: ours=None)."""
        oldest = self._in_flight.oldest_waiting_elsewhere(state.queue_id)
        if not oldest:
            return False
        now = time.monotonic_ns()
        if now - oldest > (deployment.request_settings.max_queue_wait_ms + 1000) * 1_000_000:
            return False
        return own_since is None or oldest < own_since

    def _publish_oldest(self, state: _DeploymentState) -> None:
        if self._in_flight.shared:
            head = state.waiters[0] if state.waiters else None
            self._in_flight.set_waiting(state.queue_id, state.since.get(head, 0) if head is not None else 0)

    def release(self, key: Key, replica_id: str) -> None:
        state = self._states.get(key) or self._state(key)
        self._account(state)
        self._in_flight.release(replica_id)
        state.busy -= 1
        if state.waiters:
            self._dispatch(key, state)

    def _dispatch(self, key: Key, state: _DeploymentState) -> None:
        """Hand free slots to the oldest waiters, in order."""
        endpoint = self._holder.current.endpoints.get(key[0])
        deployment = endpoint.deployments.get(key[1]) if endpoint else None
        if deployment is None or not deployment.replicas:
            # Nothing left to wait for: its last replica left, or the deployment did.
            self._refuse_waiters(key, state, deployment)
            return
        shared = self._in_flight.shared
        passed_over: list[asyncio.Future] = []  # retries with no slot among untried replicas
        while state.waiters:
            waiter = state.waiters.popleft()
            if waiter.done():  # timed out or cancelled meanwhile
                state.since.pop(waiter, None)
                continue
            if shared and self._waiting_elsewhere(state, deployment, state.since.get(waiter)):
                state.waiters.appendleft(waiter)  # another process's caller is older: its turn
                break
            tried = state.tried.get(waiter) if state.tried else None
            if tried is None:
                replica = self._take(state, deployment, self.candidates(deployment))
                if replica is None:
                    state.waiters.appendleft(waiter)  # still the oldest
                    break
            else:  # a retry: a replica it has not tried, or any once it tried them all
                replica = self._take(state, deployment,
                                     self.candidates(deployment, tried) or self.candidates(deployment))
                if replica is None:
                    passed_over.append(waiter)
                    continue
            state.since.pop(waiter, None)
            waiter.set_result(replica)
        if passed_over:
            state.waiters.extendleft(reversed(passed_over))  # their places, ahead of the rest
        if shared:
            self._publish_oldest(state)

    def _refuse_waiters(self, key: Key, state: _DeploymentState, deployment: DeploymentRoute | None) -> None:
        """Answer every waiter 503 NoReadyReplica at once (not 429 when its wait is over)."""
        if deployment is None:
            message = f"deployment '{key[1]}' is being removed"
        else:
            message = f"deployment '{deployment.name}' has no ready replica" + (
                f": {deployment.unavailable_reason}" if deployment.unavailable_reason else "")
        self._account(state)
        while state.waiters:
            waiter = state.waiters.popleft()
            state.since.pop(waiter, None)
            if not waiter.done():
                waiter.set_exception(NoReadyReplica(message))
        self._publish_oldest(state)

    def _on_table_change(self, _old: RoutingTable, _new: RoutingTable) -> None:
        for key, state in self._states.items():
            if state.waiters:
                self._dispatch(key, state)

    def _on_readmitted(self, _replica_id: str) -> None:
        self._on_table_change(self._holder.current, self._holder.current)

    # With counts shared by several processes, a slot freed in another process wakes
    # nobody here: while anyone waits, look again every SHARED_POLL_S.
    SHARED_POLL_S = 0.002

    def _watch_shared(self) -> None:
        if self._in_flight.shared and self._poll is None:
            self._poll = asyncio.get_running_loop().call_later(self.SHARED_POLL_S, self._poll_shared)

    def _poll_shared(self) -> None:
        self._poll = None
        self._on_table_change(self._holder.current, self._holder.current)
        if any(state.waiters for state in self._states.values()):
            self._watch_shared()

    # -- the async stage --------------------------------------------------------------------
    async def acquire(self, key: Key, deployment: DeploymentRoute, exclude: Iterable[str] = ()) -> Replica:
        if exclude:
            exclude = frozenset(exclude)  # read twice (candidates, a queued retry), and kept as it is now
        candidates = self.candidates(deployment, exclude)
        if not candidates:
            raise NoReadyReplica(f"deployment '{deployment.name}' has no ready replica"
                                 + (f": {deployment.unavailable_reason}" if deployment.unavailable_reason else ""))
        replica = self.try_acquire(key, deployment, candidates=candidates)
        if replica is not None:
            return replica
        settings = deployment.request_settings
        state = self._state(key)
        bound = self.queue_bound(deployment)
        if len(state.waiters) >= bound or settings.max_queue_wait_ms <= 0:
            raise QueueFull(f"all {len(candidates) * settings.max_concurrent_requests_per_instance} "
                            f"slots of deployment '{deployment.name}' are busy and its queue "
                            f"({bound}) is full")
        waiter = asyncio.get_running_loop().create_future()
        self._account(state)
        state.waiters.append(waiter)
        state.since[waiter] = time.monotonic_ns()
        if exclude:
            state.tried[waiter] = exclude
        if len(state.waiters) == 1:
            self._publish_oldest(state)
        self._watch_shared()
        queued_at = self._clock()
        try:
            async with asyncio.timeout(settings.max_queue_wait_ms / 1000):
                return await asyncio.shield(waiter)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # a slot arrived at the very moment the wait ended
            raise QueueWaitTimeout(
                f"no slot of deployment '{deployment.name}' freed up within "
                f"{settings.max_queue_wait_ms} ms") from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(key, waiter.result().replica_id)  # caller went away holding a slot
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            state.since.pop(waiter, None)
            if exclude:
                state.tried.pop(waiter, None)
            if waiter in state.waiters:
                self._account(state)
                state.waiters.remove(waiter)
                self._publish_oldest(state)
            if self._on_queue_wait is not None:
                self._on_queue_wait(key, self._clock() - queued_at)

    def queue_bound(self, deployment: DeploymentRoute) -> int:
        slots = len(deployment.replicas) * deployment.request_settings.max_concurrent_requests_per_instance
        return max(1, -(-self._queue_depth_factor * slots // self._queue_share))

    # -- reading ----------------------------------------------------------------------------
    def queued(self, key: Key) -> int:
        state = self._states.get(key)
        return len(state.waiters) if state else 0

    def busy(self, key: Key) -> int:
        state = self._states.get(key)
        return state.busy if state else 0

    def keys(self) -> list[Key]:
        """Every deployment this process has admitted requests for."""
        return list(self._states)

    def take_window(self, key: Key) -> UtilizationWindow:
        """Average level since the last call for this deployment, then start a new window."""
        state = self._state(key)
        self._account(state)
        now = self._clock()
        elapsed = now - state.window_start
        average = state.level_integral / elapsed if elapsed > 0 else float(state.level())
        state.level_integral, state.window_start = 0.0, now
        endpoint = self._holder.current.endpoints.get(key[0])
        deployment = endpoint.deployments.get(key[1]) if endpoint else None
        replicas = len(deployment.replicas) if deployment else 0
        slots = deployment.request_settings.max_concurrent_requests_per_instance if deployment else 1
        return UtilizationWindow(average, replicas, slots, elapsed)
