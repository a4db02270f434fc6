"""Per-replica limits held across processes (router/balancing/shared.py): real processes
on real shared memory, and two admission controllers that only share the counts."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import pytest

from router.admission import Admission, QueueWaitTimeout
from router.balancing.ejection import OutlierEjector
from router.balancing.least_outstanding import LeastOutstandingPicker
from router.balancing.shared import SharedInFlightCounter, SlotIndex, create_shared_counts
from router.routing_table import RoutingTableHolder
from tests.functional.router_harness import deployment, table

SPAWN = multiprocessing.get_context("spawn")


def _hammer(name: str, lock, inside, peak, taken, refused, start, rounds: int, limit: int) -> None:
    """A worker process: take a slot of one of two replicas, hold it briefly, give it back."""
    from multiprocessing import shared_memory

    from router.balancing.least_outstanding import LeastOutstandingPicker
    from router.routing_table import Replica

    memory = shared_memory.SharedMemory(name=name)
    counter = SharedInFlightCounter(memory, lock)
    counter.assign({"a": 0, "b": 1})
    replicas = [Replica("a", "127.0.0.1", 1), Replica("b", "127.0.0.1", 2)]
    picker, rng = LeastOutstandingPicker(random.Random()), random.Random()
    start.wait(timeout=60)  # all processes begin together (spawning them takes a while)
    for _ in range(rounds):
        chosen = counter.take_free(replicas, limit, picker)
        if chosen is None:
            with inside.get_lock():
                refused.value += 1
            time.sleep(0.0005)
            continue
        slot = 0 if chosen.replica_id == "a" else 1
        with inside.get_lock():
            inside[slot] += 1
            peak[slot] = max(peak[slot], inside[slot])
            taken.value += 1
        time.sleep(rng.random() * 0.002)
        with inside.get_lock():
            inside[slot] -= 1
        counter.release(chosen.replica_id)
    counter.close()
    memory.close()


def test_five_processes_never_exceed_a_replica_limit():
    memory = create_shared_counts(16)
    lock = SPAWN.Lock()
    inside, peak = SPAWN.Array("i", 2), SPAWN.Array("i", 2, lock=False)
    taken, refused = SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    start = SPAWN.Barrier(5)
    try:
        # Five processes, two replicas of two slots: more takers than slots at most moments.
        workers = [SPAWN.Process(target=_hammer, args=(memory.name, lock, inside, peak, taken, refused, start, 300, 2))
                   for _ in range(5)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        assert max(peak) == 2 and min(peak) >= 1  # used up to the limit, never beyond
        assert refused.value > 0  # there was contention: some takes found both replicas full
        assert taken.value > 300
        counts = memory.buf.cast("q")
        assert counts[0] == 0 and counts[1] == 0  # every slot given back
        counts.release()
    finally:
        memory.close()
        memory.unlink()


@pytest.fixture
def shared():
    memory = create_shared_counts(8)
    lock = SPAWN.Lock()
    counters = [SharedInFlightCounter(memory, lock) for _ in range(2)]
    yield counters
    for counter in counters:
        counter.close()
    memory.close()
    memory.unlink()


def _two_workers(shared: list[SharedInFlightCounter], route) -> tuple[Admission, Admission]:
    """Two admission controllers (as in two worker processes) sharing only the counts."""
    index = SlotIndex(shared[0]).update({r.replica_id for r in route.replicas})
    for counter in shared:
        counter.assign(index)
    return tuple(Admission(RoutingTableHolder(table(route)), counter,  # type: ignore[return-value]
                           LeastOutstandingPicker(random.Random(1)), OutlierEjector()) for counter in shared)


async def test_a_slot_freed_in_one_process_goes_to_a_waiter_in_another(shared):
    route = deployment("blue", [9], max_concurrent_requests_per_instance=1, max_queue_wait_ms=2000)
    first, second = _two_workers(shared, route)
    key = ("ep", "blue")
    held = await first.acquire(key, route)
    assert second.try_acquire(key, route) is None  # the other "worker" sees the slot taken
    assert shared[1].get("blue-0") == 1 and shared[1].total() == 0
    waiting = asyncio.create_task(second.acquire(key, route))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    first.release(key, held.replica_id)
    got = await asyncio.wait_for(waiting, 1.0)  # found by the waiter's poll, not a wake-up
    assert got.replica_id == "blue-0" and shared[0].get("blue-0") == 1 and shared[1].total() == 1
    second.release(key, got.replica_id)
    assert shared[0].get("blue-0") == 0


async def test_a_waiter_still_times_out_when_no_process_frees_a_slot(shared):
    route = deployment("blue", [9], max_concurrent_requests_per_instance=1, max_queue_wait_ms=100)
    first, second = _two_workers(shared, route)
    key = ("ep", "blue")
    held = await first.acquire(key, route)
    with pytest.raises(QueueWaitTimeout):
        await second.acquire(key, route)
    assert second.queued(key) == 0
    first.release(key, held.replica_id)


def test_slot_index_keeps_a_draining_replica_counted_and_reuses_slots_after(shared):
    counter = shared[0]
    slots = SlotIndex(counter)
    first = slots.update({"a", "b"})
    counter.assign(first)
    from router.routing_table import Replica
    busy = counter.take_free([Replica("a", "h", 1)], 1, LeastOutstandingPicker())
    assert busy is not None
    after = slots.update({"b"})  # "a" left the table with a request still in flight
    assert after["a"] == first["a"] and after["b"] == first["b"]
    counter.assign(after)
    counter.release("a")
    later = slots.update({"b", "c", "d", "e", "f", "g", "h", "i"})  # 8 slots: "a"'s is free again
    assert "a" not in later and len(set(later.values())) == 8
    with pytest.raises(RuntimeError):
        slots.update({"b", "c", "d", "e", "f", "g", "h", "i", "j"})
    assert counter.take_free([Replica("zz", "h", 1)], 5, LeastOutstandingPicker()) is None  # no slot: never free
