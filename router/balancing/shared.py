"""In-flight counts shared by several router processes on one machine.

The building block for `--workers N` (docs/performance.md): each replica's
`max_concurrent_requests_per_instance` must hold across every process that forwards to
it. The counts live in a shared-memory array of 64-bit integers, one slot per replica;
the process that owns the routing table hands out the slot indices (SlotIndex) and sends
them along with the table. Taking a slot is one step under one process-shared lock —
read the candidates' counts, choose, increment — because a check and an increment done
separately would let two processes both take the last slot. Giving a slot back and
reads without the lock (balancing hints, "is this replica idle") need none: each process
writes only its own row of the array.

A replica with no index yet is never free: a process must not forward to a replica the
others cannot count. A deployment's admission queue has a column too (id "queue:EP/DEP"):
there each process publishes when its oldest waiter started waiting (router/admission.py
gives a freed slot to the process whose caller has waited longest).
"""

from __future__ import annotations

from multiprocessing import shared_memory
from typing import Sequence

from ..routing_table import Replica
from . import InFlightCounter, ReplicaPicker

_WORD = 8


class SharedInFlightCounter(InFlightCounter):
    """InFlightCounter over shared memory; `lock` is a multiprocessing lock shared by all
    processes that use the same `memory`.

    The memory holds one row of counts per process (`rows` of them): process `row` only
    ever adds to and subtracts from its own row, and a replica's count is the sum of its
    column. So a process that dies holding slots can be forgotten by clearing its row
    (clear_row(), by the owner of the table), and giving a slot back needs no lock (one
    writer per cell). `row=None` opens a read-only view (the owner's).
    """

    __slots__ = ("_memory", "_array", "_lock", "_index", "_row", "_rows", "_capacity", "_base", "_mine")
    shared = True

    def __init__(self, memory: shared_memory.SharedMemory, lock, row: int | None = 0, rows: int = 1) -> None:
        super().__init__()
        self._memory = memory
        self._array = memory.buf.cast("q")
        if rows < 1 or len(self._array) % rows:
            raise ValueError(f"{len(self._array)} counts do not split into {rows} rows")
        if row is not None and not 0 <= row < rows:
            raise ValueError(f"row {row} is not one of the {rows} rows")
        self._lock = lock
        self._index: dict[str, int] = {}
        self._row, self._rows = row, rows
        self._capacity = len(self._array) // rows
        self._base = (row or 0) * self._capacity
        self._mine = 0  # this process's requests in flight

    @property
    def capacity(self) -> int:
        """Replica slots (columns)."""
        return self._capacity

    def assign(self, index: dict[str, int]) -> None:
        """The slot of each replica id (from the table's owner, with each new table)."""
        self._index = dict(index)

    def count_at(self, slot: int) -> int:
        array, step = self._array, self._capacity
        return sum(array[slot + row * step] for row in range(self._rows))

    def get(self, replica_id: str) -> int:
        slot = self._index.get(replica_id)
        return self.count_at(slot) if slot is not None else 0

    def take_free(self, candidates: Sequence[Replica], limit: int, picker: ReplicaPicker) -> Replica | None:
        if self._row is None:
            raise TypeError("a read-only view of the shared counts cannot take slots")
        index = self._index
        with self._lock:
            free = [r for r in candidates
                    if r.replica_id in index and self.count_at(index[r.replica_id]) < limit]
            if not free:
                return None
            chosen = picker.choose(free, self)
            self._array[self._base + index[chosen.replica_id]] += 1
        self._mine += 1
        return chosen

    def acquire(self, replica_id: str) -> None:
        raise TypeError("shared counts are taken with take_free(), in one locked step")

    def release(self, replica_id: str) -> None:
        slot = self._index.get(replica_id)
        if slot is None or self._row is None:
            return
        cell = self._base + slot
        if self._array[cell] > 0:  # only this process writes its own row: no lock needed
            self._array[cell] -= 1
            self._mine -= 1

    def total(self) -> int:
        """Requests in flight from this process."""
        return self._mine

    def set_waiting(self, queue_id: str, since_ns: int) -> None:
        slot = self._index.get(queue_id)
        if slot is not None and self._row is not None:
            self._array[self._base + slot] = since_ns

    def oldest_waiting_elsewhere(self, queue_id: str) -> int:
        slot = self._index.get(queue_id)
        if slot is None:
            return 0
        array, step, own = self._array, self._capacity, self._row
        times = [array[slot + row * step] for row in range(self._rows) if row != own]
        return min((t for t in times if t > 0), default=0)

    def clear_row(self, row: int) -> int:
        """Forget every slot a (dead) process held, and its queues' times; returns how many
        slots it held (replica columns only: those of `assign`ed replica ids)."""
        start = row * self._capacity
        replica_slots = [slot for name, slot in self._index.items() if not name.startswith("queue:")]
        with self._lock:
            held = sum(self._array[start + slot] for slot in replica_slots)
            for cell in range(start, start + self._capacity):
                self._array[cell] = 0
        return held

    def zero_slot(self, slot: int) -> None:
        """Reset one replica's counts in every row (before its slot is handed out)."""
        for row in range(self._rows):
            self._array[slot + row * self._capacity] = 0

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
            elif self._counter.count_at(slot) == 0:
                del self._leaving[replica_id]
                self._free.append(slot)
        for replica_id in replica_ids:
            if replica_id not in self._slots:
                if not self._free:
                    raise RuntimeError(f"no free in-flight slot for replica {replica_id} "
                                       f"({self._counter.capacity} in use)")
                slot = self._free.pop()
                self._counter.zero_slot(slot)
                self._slots[replica_id] = slot
        return {**self._leaving, **self._slots}


def create_shared_counts(capacity: int = 4096, rows: int = 1) -> shared_memory.SharedMemory:
    """Zeroed shared memory for `capacity` replica counts in each of `rows` processes;
    the caller unlinks it at exit."""
    size = capacity * rows * _WORD
    memory = shared_memory.SharedMemory(create=True, size=size)
    memory.buf[:size] = bytes(size)
    return memory
