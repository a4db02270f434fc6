"""Watching a run while it happens, and slicing it by time afterwards.

Scenarios ask time-shaped questions — how many requests failed between the
kill and the recovery, what p99 was during the burst — so they need each
failure's time (per-second buckets are too coarse for a recovery measured in
tenths of a second) and statistics over windows of the run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

from ..histogram import LatencyHistogram
from ..recorder import Recorder

MAX_FAILURES = 50_000  # failure times kept; beyond, only counted (bounded memory)


def outcome(status: int | None, kind: str | None) -> str:
    """'503', 'connect', 'timeout'...: one label per failed request."""
    return str(status) if status is not None else (kind or "other")


class EventRecorder(Recorder):
    """A Recorder that also keeps when each failed request ended and how."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[float, str]] = []
        self.failures_not_kept = 0

    def on_done(self, begin: float, end: float, status: int | None, kind: str | None,
                message: str | None = None) -> None:
        super().on_done(begin, end, status, kind, message)
        if status is None or status >= 400:
            if len(self.failures) < MAX_FAILURES:
                self.failures.append((end - self.t0, outcome(status, kind)))
            else:
                self.failures_not_kept += 1

    @property
    def started(self) -> bool:
        return self.t0 > 0.0

    def now(self) -> float:
        """Seconds since the run's t0 (0 before it started)."""
        return time.perf_counter() - self.t0 if self.started else 0.0

    def failures_between(self, start: float, end: float = math.inf) -> Counter:
        """Failed requests that ended in [start, end) seconds, by outcome."""
        return Counter(what for t, what in self.failures if start <= t < end)

    def last_failure_after(self, start: float) -> float | None:
        times = [t for t, _ in self.failures if t >= start]
        return max(times) if times else None


class Watch:
    """What a scenario's action sees of the load running next to it.

    An action that is still watching the gateway when the load ends (a
    replacement replica not ready yet) may go on for `grace` seconds: its
    timings are still true, though no request measures that time any more.
    """

    def __init__(self, rec: EventRecorder, load: asyncio.Future, grace: float = 0.0) -> None:
        self.rec = rec
        self._load = load
        self._grace = grace
        self._ended: float | None = None
        load.add_done_callback(lambda _: setattr(self, "_ended", time.monotonic()))

    @property
    def running(self) -> bool:
        return not self._load.done()

    @property
    def active(self) -> bool:
        """Load running, or ended less than `grace` seconds ago."""
        return self._ended is None or time.monotonic() - self._ended < self._grace

    def now(self) -> float:
        return self.rec.now()

    async def wait_started(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.rec.started and self.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.rec.started

    async def until(self, t: float) -> bool:
        """Sleep until `t` s into the run; False if the load ended first."""
        if not await self.wait_started():
            return False
        while self.running and self.now() < t:
            await asyncio.sleep(min(0.05, max(0.0, t - self.now())))
        return self.running


def window(rec: Recorder, start: float, end: float) -> dict:
    """Requests that completed in whole seconds [floor(start), ceil(end)) of the run."""
    first, last = max(0, math.floor(start)), max(math.floor(start) + 1, math.ceil(end))
    hist = LatencyHistogram(2)
    completed = failed = sent = 0
    for idx in range(first, last):
        sec = rec.seconds.get(idx)
        if sec is None:
            continue
        completed += sec.completed
        failed += sec.failed
        sent += sec.sent
        hist.merge(sec.hist)
    span = last - first
    return {"from_s": first, "to_s": last, "sent": sent, "completed": completed,
            "failed": failed, "throughput": round(completed / span, 1) if span else 0.0,
            "p50_ms": hist.percentile_ms(50), "p99_ms": hist.percentile_ms(99),
            "max_ms": hist.max_us / 1000.0}


def outcomes_text(counts: Counter | dict) -> str:
    """'502×3, connect×1' or 'none'."""
    if not counts:
        return "none"
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
