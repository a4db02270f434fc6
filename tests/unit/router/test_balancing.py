"""Replica choice: in-flight counts and the least-outstanding policy, in one process."""

import random

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
