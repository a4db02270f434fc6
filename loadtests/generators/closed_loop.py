"""Closed-loop generator: N connections, each sending as soon as it is answered.

This finds the maximum throughput a target sustains with N requests in
flight.  Its latencies are *service* times (measured from the actual send),
and it slows down when the server does, so it must not be used to judge tail
latency under a given load; that is what the open loop is for.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ..recorder import Recorder
from .http import TIMEOUT, Target, make_session, send_one
from .open_loop import CANCELLED, drain, wait_until_wall

ERROR_BACKOFF = 0.01  # a refused connect fails at once; don't spin a core on it


@dataclass(frozen=True)
class ClosedLoopConfig:
    duration: float
    connections: int = 16
    warmup: float = 0.0  # seconds run first on the same connections, unrecorded


async def run_closed_loop(target: Target, cfg: ClosedLoopConfig,
                          recorder: Recorder | None = None,
                          start_at: float | None = None) -> Recorder:
    """Keep `connections` requests in flight for `duration` seconds."""
    rec = recorder if recorder is not None else Recorder()
    async with make_session(target, max(1, cfg.connections)) as session:
        if cfg.warmup > 0:
            await _keep_busy(session, target, max(1, cfg.connections), Recorder(), cfg.warmup)
        await wait_until_wall(start_at)
        await _keep_busy(session, target, max(1, cfg.connections), rec, cfg.duration)
    return rec


async def _keep_busy(session, target: Target, connections: int, rec: Recorder,
                     duration: float) -> None:
    """`connections` workers sending back to back for `duration` s, recorded in rec."""

    async def worker(end: float) -> None:
        while time.perf_counter() < end:
            begin = time.perf_counter()
            rec.on_start(begin)
            try:
                status, kind, message = await send_one(session, target)
            except asyncio.CancelledError:
                rec.on_done(begin, time.perf_counter(), None, TIMEOUT, CANCELLED)
                raise
            rec.on_done(begin, time.perf_counter(), status, kind, message)
            if kind is not None:
                await asyncio.sleep(ERROR_BACKOFF)

    t0 = rec.t0 = time.perf_counter()
    end = t0 + duration
    tasks = {asyncio.create_task(worker(end)) for _ in range(connections)}
    try:
        await asyncio.wait(tasks, timeout=duration)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    await drain({t for t in tasks if not t.done()}, target.timeout + 1.0)
    for t in tasks:  # surface a bug in the worker instead of hiding it
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()
    rec.elapsed = time.perf_counter() - t0
