"""Deadlines: asyncio.timeout_at() for every forwarded request, on one shared timer.

asyncio.timeout_at() schedules (and cancels) an event-loop timer per request, which on
uvloop costs a timer handle each time — several µs per request on the forwarder's
path. Here every request's deadline goes into one heap and a single timer is due at
the earliest one; an exchange that ends just marks its entry done, and done entries
are dropped from the top of the heap as new ones arrive (they are nearly always the
oldest), so the heap holds about as many entries as requests in flight.

The semantics are asyncio.timeout_at()'s: when a deadline passes, the task is
cancelled, and the CancelledError becomes TimeoutError where the `with` block ends —
unless someone else cancelled the task too, in which case it stays a cancellation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class Deadline:
    __slots__ = ("_when", "_task", "_cancelling", "expired", "done")

    def __init__(self, when: float, task: asyncio.Task) -> None:
        self._when = when
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self.done = False

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.done = True
        if self.expired and exc_type is asyncio.CancelledError and self._task.uncancel() <= self._cancelling:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()


class Deadlines:
    __slots__ = ("_heap", "_order", "_timer", "_timer_when", "_loop")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties: first in, first out (Deadlines never compare)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        # Kept: asyncio.get_running_loop(), and current_task() without a loop, each make a
        # getpid() system call in CPython 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None

    def at(self, when: float) -> Deadline:
        """`with deadlines.at(loop_time):` bounds the block like asyncio.timeout_at()."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = Deadline(when, asyncio.current_task(loop))
        heapq.heappush(heap, (when, next(self._order), deadline))
        if self._timer is None or when < self._timer_when:
            self._schedule(when)
        return deadline

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        heap = self._heap
        now = self._loop.time()
        while heap and (heap[0][2].done or heap[0][0] <= now):
            deadline = heapq.heappop(heap)[2]
            if not deadline.done:
                deadline._expire()
        if heap:
            self._schedule(heap[0][0])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
