"""Pick replica: the ReplicaPicker protocol and the in-flight counts policies read.

A picker is a policy only: given the candidate replicas of one deployment and how many
requests each has in flight from this gateway, it returns one. Bookkeeping (counting
in flight, releasing) lives in InFlightCounter so every policy sees the same numbers.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from ..routing_table import Replica


class InFlightCounter:
    """Requests in flight per replica id; plain synchronous bookkeeping."""

    __slots__ = ("_counts",)
    shared = False  # True: other processes count on the same replicas (balancing/shared.py)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def get(self, replica_id: str) -> int:
        return self._counts.get(replica_id, 0)

    def acquire(self, replica_id: str) -> None:
        self._counts[replica_id] = self._counts.get(replica_id, 0) + 1

    def release(self, replica_id: str) -> None:
        left = self._counts.get(replica_id, 0) - 1
        if left > 0:
            self._counts[replica_id] = left
        else:
            self._counts.pop(replica_id, None)

    def total(self) -> int:
        return sum(self._counts.values())

    # Queues across processes (balancing/shared.py); nobody else queues here.
    def set_waiting(self, queue_id: str, since_ns: int) -> None:
        """Publish when this process's oldest waiter of a queue started waiting (0: none)."""

    def oldest_waiting_elsewhere(self, queue_id: str) -> int:
        """The oldest waiter's start (monotonic ns) among the other processes; 0: none."""
        return 0

    def take_free(self, candidates: Sequence[Replica], limit: int, picker: "ReplicaPicker") -> Replica | None:
        """Choose among the candidates below `limit` and count one more on it, in one
        step (nothing awaits in between); None when every candidate is full."""
        counts = self._counts
        free = [r for r in candidates if counts.get(r.replica_id, 0) < limit]
        if not free:
            return None
        chosen = free[0] if len(free) == 1 else picker.choose(free, self)
        counts[chosen.replica_id] = counts.get(chosen.replica_id, 0) + 1
        return chosen


class ReplicaPicker(Protocol):
    def choose(self, candidates: Sequence[Replica], in_flight: InFlightCounter) -> Replica:
        """Return one of `candidates` (never empty)."""
