"""Open-loop generator: requests start on a schedule, not when answers arrive.

A closed loop (send, wait, send) slows down exactly when the server stalls,
so the stall is sampled by a handful of requests and vanishes from the
percentiles ("coordinated omission").  Here every request has a scheduled
start from the rate profile and its latency is measured from that scheduled
time, so time spent waiting for a free connection, or for a late generator,
is charged to the request as a real user would see it.

Warm-up: with `warmup` > 0 the same schedule first runs for that long on
the same connection pool, unrecorded, so a measurement does not start with
an empty pool (every early request opening a connection — a TLS handshake
storm that a steady client would not cause) unless that is what is measured.

Bounds: the schedule ends at `duration`; at most `max_in_flight` requests are
outstanding (a start beyond the cap is counted as dropped, "in_flight_cap");
starts the generator could not make by 1 s after `duration` are counted as
"out_of_time"; leftovers after the drain (request timeout + 1 s) are
cancelled and counted as timeouts.  How late each start actually ran is
recorded too, so the report can say when the generator fell behind.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

from ..profiles import parse_profile
from ..recorder import Recorder
from .http import TIMEOUT, Target, make_session, send_one

YIELD_EVERY = 64  # starts launched back to back before letting tasks run
CANCELLED = "cancelled: still running when the run ended"
# Event-loop timers are only millisecond-accurate (uvloop even fires up to 1 ms
# early), which would add ~0.5 ms of generator lateness to every latency.  So
# sleep until SPIN_WINDOW before a start and yield (sleep(0)) until it is due.
SPIN_WINDOW = 0.001
# A start still due when the run is over may go out this late; later ones are
# dropped as "out_of_time" so a starved generator cannot overrun the duration.
OUT_OF_TIME_GRACE = 1.0
WARMUP_DRAIN = 1.0  # warm-up requests still running this long after it are cancelled


@dataclass(frozen=True)
class OpenLoopConfig:
    """Schedule and bounds of one open-loop run (or one worker's share)."""

    profile: str
    duration: float
    connections: int = 256
    max_in_flight: int = 10_000
    worker_index: int = 0
    worker_count: int = 1
    warmup: float = 0.0


async def wait_until_wall(start_at: float | None) -> None:
    """Sleep until a wall-clock instant shared with sibling worker processes."""
    if start_at is not None:
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(min(delay, 60.0))


async def run_open_loop(target: Target, cfg: OpenLoopConfig,
                        recorder: Recorder | None = None,
                        start_at: float | None = None) -> Recorder:
    """Run the schedule against `target`; returns the (given or new) recorder."""
    rec = recorder if recorder is not None else Recorder()
    async with make_session(target, cfg.connections) as session:
        if cfg.warmup > 0:
            await _run_schedule(session, target, cfg, Recorder(), cfg.warmup, WARMUP_DRAIN)
        await wait_until_wall(start_at)
        await _run_schedule(session, target, cfg, rec, cfg.duration, target.timeout + 1.0)
    return rec


async def _run_schedule(session, target: Target, cfg: OpenLoopConfig, rec: Recorder,
                        duration: float, drain_grace: float) -> None:
    """The profile's first `duration` seconds (this worker's share), recorded in rec."""
    profile = parse_profile(cfg.profile)
    schedule = itertools.islice(profile.arrivals(duration), cfg.worker_index,
                                None, max(1, cfg.worker_count))
    tasks: set[asyncio.Task] = set()

    async def one(scheduled: float) -> None:
        begin = time.perf_counter()
        rec.on_start(begin, begin - scheduled)
        scheduled = min(scheduled, begin)  # never credit a start that ran early
        try:
            status, kind, message = await send_one(session, target)
        except asyncio.CancelledError:
            rec.on_done(scheduled, time.perf_counter(), None, TIMEOUT, CANCELLED)
            raise
        rec.on_done(scheduled, time.perf_counter(), status, kind, message)

    t0 = rec.t0 = time.perf_counter()
    end = t0 + duration
    try:
        await _launch_all(schedule, t0, end, cfg.max_in_flight, rec, tasks, one)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    # The schedule's last start may come well before the end (a low rate): the run still
    # lasts the duration asked for, its requests answered meanwhile.
    left = end - time.perf_counter()
    if left > 0:
        await asyncio.sleep(left)
    await drain(tasks, drain_grace)
    # starts that were launched but never got to run before the drain ended
    rec.on_drop("out_of_time", rec.scheduled - rec.sent - sum(rec.dropped.values()))
    rec.elapsed = time.perf_counter() - t0


async def _launch_all(schedule, t0: float, end: float, max_in_flight: int, rec: Recorder,
                      tasks: set[asyncio.Task], one) -> None:
    """Start one task per scheduled offset, on time, within the in-flight cap."""
    loop = asyncio.get_running_loop()
    launched_in_a_row = 0
    for offset in schedule:
        rec.on_scheduled(offset)
        scheduled = t0 + offset
        now = time.perf_counter()
        if scheduled > now:
            if scheduled - now > SPIN_WINDOW:
                await asyncio.sleep(scheduled - now - SPIN_WINDOW)
            while time.perf_counter() < scheduled:
                await asyncio.sleep(0)
            launched_in_a_row = 0
        elif now >= end + OUT_OF_TIME_GRACE:
            rec.on_drop("out_of_time")
            continue
        if len(tasks) >= max_in_flight:
            rec.on_drop("in_flight_cap")
            continue
        task = loop.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        launched_in_a_row += 1
        if launched_in_a_row >= YIELD_EVERY:
            launched_in_a_row = 0
            await asyncio.sleep(0)


async def drain(tasks: set[asyncio.Task], grace: float) -> None:
    """Wait for outstanding requests, bounded; stragglers are cancelled.

    Each request task records its own cancellation as a timeout.
    """
    if tasks:
        await asyncio.wait(set(tasks), timeout=grace)
    leftovers = [t for t in tasks if not t.done()]
    for t in leftovers:
        t.cancel()
    if leftovers:
        await asyncio.wait(leftovers, timeout=5.0)
