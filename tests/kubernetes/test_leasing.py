"""LeaseElector: one leader among candidates, take-over after expiry, fast hand-over on release."""

from __future__ import annotations

import asyncio

from serving.backends.kubernetes.leasing import LeaseElector
from tests.kubernetes.conftest import eventually

TIMING = dict(lease_duration_s=0.6, renew_deadline_s=0.4, retry_period_s=0.05)


def elector(kube_api, identity: str) -> LeaseElector:
    return LeaseElector(kube_api, "scoregate-system", "scoregate-controller", identity, **TIMING)


async def test_one_leader_then_take_over_when_it_stops_renewing(apiserver, kube_api):
    a, b, c = (elector(kube_api, name) for name in "abc")
    tasks = {e.identity: asyncio.create_task(e.run()) for e in (a, b, c)}
    try:
        await eventually(lambda: sum(e.is_leader for e in (a, b, c)) == 1)
        await asyncio.sleep(0.3)
        leaders = [e for e in (a, b, c) if e.is_leader]
        assert len(leaders) == 1
        first = leaders[0]
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
    task_b = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(0.2)
        assert not b.is_leader
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
