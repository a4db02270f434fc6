"""Per-replica limits held across processes (router/balancing/shared.py): real processes
on real shared memory, and two admission controllers that only share the counts."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time

import pytest

from router.admission import Admission, QueueWaitTimeout, queue_id
from router.balancing import InFlightCounter
from router.balancing.ejection import OutlierEjector
from router.balancing.least_outstanding import LeastOutstandingPicker
from router.balancing.shared import SharedInFlightCounter, SlotIndex, create_shared_counts
from router.routing_table import RoutingTableHolder
from tests.functional.router_harness import deployment, table

SPAWN = multiprocessing.get_context("spawn")


def _hammer(name: str, row: int, lock, inside, peak, taken, refused, start, rounds: int, limit: int) -> None:
    """A worker process: take a slot of one of two replicas, hold it briefly, give it back."""
    from multiprocessing import shared_memory

    from router.balancing.least_outstanding import LeastOutstandingPicker
    from router.routing_table import Replica

    memory = shared_memory.SharedMemory(name=name)
    counter = SharedInFlightCounter(memory, lock, row=row, rows=5)
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
    memory = create_shared_counts(16, rows=5)
    lock = SPAWN.Lock()
    inside, peak = SPAWN.Array("i", 2), SPAWN.Array("i", 2, lock=False)
    taken, refused = SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    start = SPAWN.Barrier(5)
    try:
        # Five processes, two replicas of two slots: more takers than slots at most moments.
        workers = [SPAWN.Process(target=_hammer, args=(memory.name, row, lock, inside, peak, taken, refused, start, 300, 2))
                   for row in range(5)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
            assert worker.exitcode == 0
        assert max(peak) == 2 and min(peak) >= 1  # used up to the limit, never beyond
        assert refused.value > 0  # there was contention: some takes found both replicas full
        assert taken.value > 300
        counts = memory.buf.cast("q")
        assert not any(counts)  # every slot given back, in every process's row
        counts.release()
    finally:
        memory.close()
        memory.unlink()


@pytest.fixture
def shared():
    memory = create_shared_counts(8, rows=2)
    lock = SPAWN.Lock()
    counters = [SharedInFlightCounter(memory, lock, row=row, rows=2) for row in range(2)]
    yield counters
    for counter in counters:
        counter.close()
    memory.close()
    memory.unlink()


def _two_workers(shared: list[SharedInFlightCounter], route) -> tuple[Admission, Admission]:
    """Two admission controllers (as in two worker processes) sharing only the counts."""
    index = SlotIndex(shared[0]).update({r.replica_id for r in route.replicas} | {queue_id(("ep", route.name))})
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


async def test_a_freed_slot_goes_to_the_process_whose_caller_waited_longest(shared):
    """The process that frees a slot does not keep it for its own (newer) waiter while an
    older caller waits in another process: no worker's queue starves."""
    route = deployment("blue", [9], max_concurrent_requests_per_instance=1, max_queue_wait_ms=2000)
    first, second = _two_workers(shared, route)
    key = ("ep", "blue")
    held = await first.acquire(key, route)
    older = asyncio.create_task(second.acquire(key, route))
    await asyncio.sleep(0.02)
    newer = asyncio.create_task(first.acquire(key, route))
    await asyncio.sleep(0.02)
    assert first.try_acquire(key, route) is None  # no barging either
    first.release(key, held.replica_id)
    got = await asyncio.wait_for(older, 1.0)
    assert got.replica_id == "blue-0" and not newer.done()
    second.release(key, got.replica_id)
    assert (await asyncio.wait_for(newer, 1.0)).replica_id == "blue-0"  # then the next in line
    first.release(key, "blue-0")
    assert shared[0].get("blue-0") == 0
    assert shared[0].oldest_waiting_elsewhere(queue_id(key)) == 0  # nobody waits: nothing published


def test_each_of_n_processes_keeps_a_share_of_the_queue():
    route = deployment("blue", [9], max_concurrent_requests_per_instance=2)
    alone = Admission(RoutingTableHolder(table(route)), InFlightCounter(), LeastOutstandingPicker(), OutlierEjector(),
                      queue_depth_factor=2)
    shared = Admission(RoutingTableHolder(table(route)), InFlightCounter(), LeastOutstandingPicker(),
                       OutlierEjector(), queue_depth_factor=2, queue_share=3)
    assert alone.queue_bound(route) == 4 and shared.queue_bound(route) == 2  # ceil(4 / 3): never 0


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


def _take_and_die(name: str, row: int, lock) -> None:
    """A worker that takes a slot and exits at once, never giving it back (a crash)."""
    import os
    from multiprocessing import shared_memory

    from router.balancing.least_outstanding import LeastOutstandingPicker
    from router.routing_table import Replica

    counter = SharedInFlightCounter(shared_memory.SharedMemory(name=name), lock, row=row, rows=2)
    counter.assign({"a": 0})
    assert counter.take_free([Replica("a", "127.0.0.1", 1)], 1, LeastOutstandingPicker()) is not None
    os._exit(0)


def test_the_slots_of_a_dead_process_are_given_back_by_clearing_its_row():
    from router.routing_table import Replica

    memory = create_shared_counts(4, rows=2)
    lock = SPAWN.Lock()
    owner = SharedInFlightCounter(memory, lock, row=None, rows=2)  # the table owner's view
    survivor = SharedInFlightCounter(memory, lock, row=0, rows=2)
    try:
        for counter in (owner, survivor):
            counter.assign({"a": 0})
        worker = SPAWN.Process(target=_take_and_die, args=(memory.name, 1, lock))
        worker.start()
        worker.join(timeout=60)
        assert worker.exitcode == 0
        replicas, picker = [Replica("a", "127.0.0.1", 1)], LeastOutstandingPicker()
        assert owner.get("a") == 1
        assert survivor.take_free(replicas, 1, picker) is None  # the dead process still holds it
        with pytest.raises(TypeError):
            owner.take_free(replicas, 1, picker)  # the owner only reads
        assert owner.clear_row(1) == 1
        assert owner.get("a") == 0
        assert survivor.take_free(replicas, 1, picker) is not None  # free again
        survivor.release("a")
        assert owner.get("a") == 0 and survivor.total() == 0
    finally:
        owner.close()
        survivor.close()
        memory.close()
        memory.unlink()
