"""Replica choice: in-flight counts and the least-outstanding policy, in one process."""

import asyncio
import random
from dataclasses import replace

from router.balancing import InFlightCounter
from router.balancing.least_outstanding import LeastOutstandingPicker
from router.routing_table import Replica

REPLICAS = [Replica(f"r{i}", "127.0.0.1", 9000 + i) for i in range(3)]


def test_each_new_request_goes_to_the_least_busy_replica_within_its_slots():
    counts, picker = InFlightCounter(), LeastOutstandingPicker(random.Random(7))
    counts.acquire("r0")
    counts.acquire("r0")
    counts.acquire("r1")
    assert counts.take_free(REPLICAS, 3, picker).replica_id == "r2"  # 2, 1, 0 in flight
    assert counts.take_free(REPLICAS, 3, picker).replica_id in ("r1", "r2")  # 2, 1, 1
    assert [counts.get(r.replica_id) for r in REPLICAS] in ([2, 2, 1], [2, 1, 2])


def test_a_full_replica_is_skipped_and_none_is_returned_when_all_are_full():
    counts, picker = InFlightCounter(), LeastOutstandingPicker(random.Random(7))
    taken = [counts.take_free(REPLICAS[:1], 2, picker) for _ in range(3)]
    assert [r.replica_id if r else None for r in taken] == ["r0", "r0", None]  # one candidate: its 2 slots
    assert counts.get("r0") == 2
    assert counts.take_free(REPLICAS[:2], 2, picker).replica_id == "r1"
    counts.release("r0")
    assert counts.get("r0") == 1 and counts.total() == 2


def test_ties_are_broken_at_random_and_spread_evenly():
    counts, picker = InFlightCounter(), LeastOutstandingPicker(random.Random(7))
    seen = {r.replica_id: 0 for r in REPLICAS}
    for _ in range(300):
        chosen = counts.take_free(REPLICAS, 1, picker)
        seen[chosen.replica_id] += 1
        counts.release(chosen.replica_id)  # every replica idle again: a three-way tie each time
    assert all(60 < n < 140 for n in seen.values()), seen


def test_admission_leaves_out_ejected_replicas_until_readmitted_or_forgotten():
    """The candidates skip their per-replica check while nothing is ejected: the set of
    ejected replicas must follow every ejection, re-admission and removal."""
    import asyncio

    from router.admission import Admission
    from router.balancing.ejection import OutlierEjector
    from router.routing_table import DeploymentRoute, RoutingTableHolder

    async def scenario() -> None:
        ejector = OutlierEjector(consecutive_failures=1, base_ejection_s=0.01)
        healthy = {"r0": False}
        readmitted = asyncio.Event()

        async def probe(replica_id: str) -> bool:
            if healthy[replica_id]:
                readmitted.set()
            return healthy[replica_id]

        ejector.probe = probe
        admission = Admission(RoutingTableHolder(), InFlightCounter(), LeastOutstandingPicker(random.Random(7)),
                              ejector)
        deployment = DeploymentRoute("blue", replicas=tuple(REPLICAS))
        names = lambda: [r.replica_id for r in admission.candidates(deployment)]  # noqa: E731
        assert names() == ["r0", "r1", "r2"]
        assert ejector.on_failure("r0", "reset") and ejector.on_failure("r1", "reset")
        assert names() == ["r2"] and ejector.is_ejected("r0")
        assert names() == ["r2"]  # a failed probe ejects again
        await asyncio.sleep(0.05)
        assert names() == ["r2"]
        healthy["r0"] = True
        await asyncio.wait_for(readmitted.wait(), 5)
        await asyncio.sleep(0)
        assert names() == ["r0", "r2"] and not ejector.is_ejected("r0")
        ejector.forget({"r0", "r2"})  # r1 left the routing table while ejected
        assert not ejector.is_ejected("r1") and ejector.ejected() == []
        assert [r.replica_id for r in admission.candidates(deployment, exclude=["r2"])] == ["r0", "r1"]
        await ejector.close()

    asyncio.run(scenario())


async def test_a_queued_retry_is_handed_a_replica_it_has_not_tried():
    """A request whose connection to r0 failed waits for a slot: a slot freed on r0 goes to
    the caller behind it, and the retry gets the next one elsewhere; once every replica
    left in the table is one it tried, it may go back to one."""
    from router.admission import Admission
    from router.balancing.ejection import OutlierEjector
    from router.routing_table import (DeploymentRoute, EndpointRoute, RequestSettings, RoutingTable,
                                      RoutingTableHolder)

    settings = RequestSettings(max_concurrent_requests_per_instance=1, max_queue_wait_ms=5000)
    two = DeploymentRoute("blue", replicas=tuple(REPLICAS[:2]), request_settings=settings)
    holder = RoutingTableHolder(RoutingTable(1, {"ep": EndpointRoute("ep", deployments={"blue": two})}))
    ejector = OutlierEjector(consecutive_failures=100)  # no ejection: only what was tried counts
    admission = Admission(holder, InFlightCounter(), LeastOutstandingPicker(random.Random(7)), ejector)
    key = ("ep", "blue")

    async def queued(**kwargs) -> asyncio.Task:
        before = admission.queued(key)
        task = asyncio.ensure_future(admission.acquire(key, two, **kwargs))
        for _ in range(100):  # queueing is synchronous once the task runs: a few turns at most
            if task.done() or admission.queued(key) > before:
                break
            await asyncio.sleep(0)
        assert not task.done() and admission.queued(key) == before + 1
        return task

    assert {admission.try_acquire(key, two).replica_id, admission.try_acquire(key, two).replica_id} == {"r0", "r1"}
    retry = await queued(exclude=["r0"])  # its connection to r0 failed; both slots are busy
    plain = await queued()
    admission.release(key, "r0")
    await asyncio.wait([retry, plain], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert not retry.done(), f"the retry was handed {retry.result().replica_id}, which it had tried"
    assert plain.result().replica_id == "r0"  # the slot went to the caller behind it, not left idle
    admission.release(key, "r1")
    assert (await asyncio.wait_for(retry, 5)).replica_id == "r1"

    # r1 leaves the table while a retry that tried r0 waits: r0 is all there is, so r0 it is.
    again = await queued(exclude=["r0"])
    one = replace(two, replicas=(REPLICAS[0],))
    holder.swap(RoutingTable(2, {"ep": EndpointRoute("ep", deployments={"blue": one})}))
    admission.release(key, "r1")
    admission.release(key, "r0")
    assert (await asyncio.wait_for(again, 5)).replica_id == "r0"
    await ejector.close()
