"""In-flight counts shared by several router processes on one machine.

The building block for `--workers N` (docs/performance.md): each replica's
`max_concurrent_requests_per_instance` must hold across every process that forwards to
it. The counts live in a shared-memory array of 64-bit integers, one slot per replica;
the process that owns the routing table hands out the slot indices (SlotIndex) and sends
them along with the table. Taking a slot is one step under one process-shared lock —
read the candidates' counts, choose, increment — because a check and an increment done
separately would let two processes both take the last slot. Reads without the lock
(balancing hints, "is this replica idle") see a count at most one step old.

A replica with no index yet is never free: a process must not forward to a replica the
others cannot count.
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Sequence

from ..routing_table import Replica
from . import InFlightCounter, ReplicaPicker

_WORD = 8


class SharedInFlightCounter(InFlightCounter):
    """InFlightCounter over shared memory; `lock` is a multiprocessing lock shared by all
    processes that use the same `memory`."""

    __slots__ = ("_memory", "_array", "_lock", "_index", "_mine")
    shared = True

    def __init__(self, memory: shared_memory.SharedMemory, lock) -> None:
        super().__init__()
        self._memory = memory
        self._array = memory.buf.cast("q")
        self._lock = lock
        self._index: dict[str, int] = {}
        self._mine: dict[str, int] = {}  # this process's own requests in flight, per replica

    @property
    def capacity(self) -> int:
        return len(self._array)

    def assign(self, index: dict[str, int]) -> None:
        """The slot of each replica id (from the table's owner, with each new table)."""
        self._index = dict(index)

    def get(self, replica_id: str) -> int:
        slot = self._index.get(replica_id)
        return self._array[slot] if slot is not None else 0

    def take_free(self, candidates: Sequence[Replica], limit: int, picker: ReplicaPicker) -> Replica | None:
        with self._lock:
            free = [r for r in candidates
                    if r.replica_id in self._index and self._array[self._index[r.replica_id]] < limit]
            if not free:
                return None
            chosen = picker.choose(free, self)
            self._array[self._index[chosen.replica_id]] += 1
        self._mine[chosen.replica_id] = self._mine.get(chosen.replica_id, 0) + 1
        return chosen

    def acquire(self, replica_id: str) -> None:
        raise TypeError("shared counts are taken with take_free(), in one locked step")

    def release(self, replica_id: str) -> None:
        left = self._mine.get(replica_id, 0) - 1
        if left < 0:
            return  # not ours: nothing to give back
        if left:
            self._mine[replica_id] = left
        else:
            del self._mine[replica_id]
        slot = self._index.get(replica_id)
        if slot is None:
            return
        with self._lock:
            if self._array[slot] > 0:
                self._array[slot] -= 1

    def total(self) -> int:
        """Requests in flight from this process."""
        return sum(self._mine.values())

    def close(self) -> None:
        """Let go of the view; whoever opened `memory` closes (and its creator unlinks) it."""
        self._array.release()


class SlotIndex:
    """Hands out array slots to replica ids (in the process that owns the routing table).

    A slot is reused only once its replica has left the table and its count is back to
    0, so a draining replica keeps being counted until its last request ends."""

    def __init__(self, counter: SharedInFlightCounter) -> None:
        self._counter = counter
        self._slots: dict[str, int] = {}
        self._free = list(range(counter.capacity - 1, -1, -1))
        self._leaving: dict[str, int] = {}

    def update(self, replica_ids: set[str]) -> dict[str, int]:
        """Slots for exactly these replicas plus those still draining; raises when full."""
        for replica_id in [r for r in self._slots if r not in replica_ids]:
            self._leaving[replica_id] = self._slots.pop(replica_id)
        for replica_id, slot in list(self._leaving.items()):
            if replica_id in replica_ids:
                self._slots[replica_id] = self._leaving.pop(replica_id)
            elif self._counter._array[slot] == 0:
                del self._leaving[replica_id]
                self._free.append(slot)
        for replica_id in replica_ids:
            if replica_id not in self._slots:
                if not self._free:
                    raise RuntimeError(f"no free in-flight slot for replica {replica_id} "
                                       f"({self._counter.capacity} in use)")
                slot = self._free.pop()
                self._counter._array[slot] = 0
                self._slots[replica_id] = slot
        return {**self._leaving, **self._slots}


def create_shared_counts(capacity: int = 4096) -> shared_memory.SharedMemory:
    """Zeroed shared memory for `capacity` replica counts; the caller unlinks it at exit."""
    memory = shared_memory.SharedMemory(create=True, size=capacity * _WORD)
    memory.buf[:] = bytes(capacity * _WORD)
    return memory
