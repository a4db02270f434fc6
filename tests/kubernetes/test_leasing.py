"""LeaseElector: one leader among candidates, take-over after expiry, fast hand-over on release."""

from __future__ import annotations

import asyncio
from datetime import datetime

from serving.backends.kubernetes.leasing import LeaseElector
from tests.kubernetes.conftest import eventually

TIMING = dict(lease_duration_s=0.6, renew_deadline_s=0.4, retry_period_s=0.05)
LEASES = ("coordination.k8s.io", "v1", "leases")


def elector(kube_api, identity: str) -> LeaseElector:
    return LeaseElector(kube_api, "scoregate-system", "scoregate-controller", identity, **TIMING)


def tries(e: LeaseElector) -> list[tuple[bool, bool]]:
    """The outcome of each of e's tries from now on, (held, another holds it validly): a
    check that e did not take the Lease waits for its tries, not for a while."""
    outcomes: list[tuple[bool, bool]] = []
    try_once = e.try_acquire_or_renew

    async def recorded() -> tuple[bool, bool]:
        outcomes.append(await try_once())
        return outcomes[-1]
    e.try_acquire_or_renew = recorded
    return outcomes


def renewed_for(apiserver) -> float:
    """How long the holder has renewed the Lease since it acquired it (its own timestamps)."""
    spec = apiserver.get(LEASES, "scoregate-system", "scoregate-controller")["spec"]
    acquired, renewed = (datetime.strptime(spec[f], "%Y-%m-%dT%H:%M:%S.%fZ") for f in ("acquireTime", "renewTime"))
    return (renewed - acquired).total_seconds()


async def test_one_leader_then_take_over_when_it_stops_renewing(apiserver, kube_api):
    a, b, c = (elector(kube_api, name) for name in "abc")
    outcomes = {e.identity: tries(e) for e in (a, b, c)}
    tasks = {e.identity: asyncio.create_task(e.run()) for e in (a, b, c)}
    try:
        await eventually(lambda: sum(e.is_leader for e in (a, b, c)) == 1)
        [first] = [e for e in (a, b, c) if e.is_leader]
        others = [e for e in (a, b, c) if e is not first]
        # it keeps the Lease by renewing it: for longer than a lease duration, after which
        # the others, trying every retry period, would have taken an unrenewed Lease over
        await eventually(lambda: renewed_for(apiserver) > TIMING["lease_duration_s"], timeout_s=3,
                         what="the leader renewing for a lease duration", context=lambda: str(outcomes))
        since = {e.identity: len(outcomes[e.identity]) for e in others}
        await eventually(lambda: all(len(outcomes[e.identity]) > since[e.identity] for e in others),
                         what="a try of each of the others after that")
        assert [e for e in (a, b, c) if e.is_leader] == [first]
        [lease] = apiserver.objects_of("leases", "scoregate-system")
        assert lease["spec"]["holderIdentity"] == first.identity and lease["spec"]["leaseTransitions"] == 0
        assert all(outcome == (False, True) for e in others for outcome in outcomes[e.identity][since[e.identity]:])
        tasks[first.identity].cancel()  # dies without releasing
        loop = asyncio.get_running_loop()
        died = loop.time()
        second = await eventually(lambda: next((e for e in (a, b, c) if e is not first and e.is_leader), None),
                                  timeout_s=3)
        assert loop.time() - died >= TIMING["lease_duration_s"] * 0.9  # waited the lease out
        [lease] = apiserver.objects_of("leases", "scoregate-system")
        assert lease["spec"]["holderIdentity"] == second.identity
        assert lease["spec"]["leaseTransitions"] == 1
        assert sum(e.is_leader for e in (a, b, c) if e is not first) == 1
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_release_hands_over_at_once(apiserver, kube_api):
    a = elector(kube_api, "a")
    task_a = asyncio.create_task(a.run())
    await eventually(lambda: a.is_leader)
    b = elector(kube_api, "b")
    outcomes = tries(b)
    task_b = asyncio.create_task(b.run())
    try:
        await eventually(lambda: len(outcomes) >= 2, what="two tries of b")
        assert outcomes[:2] == [(False, True)] * 2 and not b.is_leader  # a holds it validly: b waits
        task_a.cancel()
        await asyncio.gather(task_a, return_exceptions=True)
        a.is_leader = True  # (cancelled mid-term: release as a graceful shutdown would)
        loop = asyncio.get_running_loop()
        released = loop.time()
        await a.release()
        await eventually(lambda: b.is_leader, timeout_s=2)
        assert loop.time() - released < TIMING["lease_duration_s"]
    finally:
        task_b.cancel()
        await asyncio.gather(task_b, return_exceptions=True)


async def test_a_leader_that_sees_another_holder_steps_down(apiserver, kube_api):
    a = elector(kube_api, "a")
    task = asyncio.create_task(a.run())
    await eventually(lambda: a.is_leader)
    apiserver.update(("coordination.k8s.io", "v1", "leases"), "scoregate-system", "scoregate-controller",
                     lambda lease: lease["spec"].update(holderIdentity="intruder"))
    await asyncio.wait_for(a.lost.wait(), 2)
    assert not a.is_leader
    await asyncio.wait_for(task, 1)
