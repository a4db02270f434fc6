"""The access log: one JSON line per request, written off the hot path.

record() runs in the request's handler and appends its JSON line to a bounded buffer;
a background task hands the buffer, whole, to a worker thread that writes it.
If the writer falls behind or the sink fails, lines are dropped and counted — a log
problem never slows or fails a request. No credential, no body, no query string is
ever written (the query may carry secrets); the path is kept. Sampling keeps every
error and a share of successes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .context import RequestContext

log = logging.getLogger("scoregate.router.accesslog")


class AccessLog:
    def __init__(self, target: str | Path | None, *, sample_rate: float = 1.0, max_pending: int = 10000,
                 flush_interval_s: float = 0.2, max_file_bytes: int = 100 * 1024 * 1024,
                 rng: random.Random | None = None) -> None:
        """target: a file path, "-" for stdout, or None (off)."""
        self._target = None if target is None else (str(target) if str(target) == "-" else Path(target))
        self.sample_rate = sample_rate
        self._max_pending = max_pending
        self._flush_interval_s = flush_interval_s
        self._max_file_bytes = max_file_bytes
        self._rng = rng or random.Random()
        self._task: asyncio.Task | None = None
        self._writing: asyncio.Future | None = None  # the batch the writer thread has
        # Lines made, not written yet: one buffer, appended to as requests end.
        self._buffer = bytearray()
        self._lines = 0
        self._wall_ns = time.time_ns() - time.perf_counter_ns()  # wall clock of a monotonic stamp
        self.dropped = 0
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def record(self, ctx: RequestContext) -> None:
        """Make the request's line now, into the buffer the writer takes whole. At once rather
        than later in batches: the context is freed as the request ends instead of being
        held (and walked by the garbage collector) until the flush, and no request waits
        behind a batch of lines (docs/performance.md, ninth round)."""
        if self._target is None:
            return
        if ctx.status < 400 and self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            return
        if self._lines >= self._max_pending:
            self.dropped += 1
            return
        if not ctx.ended_ns:
            ctx.finish()
        try:
            self._buffer += _line(ctx, self._wall_ns)
        except (TypeError, ValueError) as exc:  # a value JSON cannot carry: the line, not the request, fails
            self.dropped += 1
            log.warning("access log line of request %s dropped: %s", ctx.request_id, exc)
            return
        self._lines += 1

    async def start(self) -> None:
        if self._target is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="access-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._writing is not None:  # a batch the cancelled flush handed over: it goes first
            await asyncio.gather(self._writing, return_exceptions=True)
        if self._lines:
            await self._flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            if self._lines:
                await self._flush()

    async def _flush(self) -> None:
        """Hand the buffer to the writer thread and wait for it. Cancelled meanwhile (the
        gateway stops), the write still ends and is counted: close() waits for it."""
        data, lines = self._buffer, self._lines
        self._buffer, self._lines = bytearray(), 0
        self._wall_ns = time.time_ns() - time.perf_counter_ns()  # follows clock adjustments
        writing = self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, data))
        writing.add_done_callback(lambda done: self._count(done, lines))
        await asyncio.gather(asyncio.shield(writing), return_exceptions=True)

    def _count(self, done: asyncio.Future, lines: int) -> None:
        if self._writing is done:
            self._writing = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is None:
            self.written += lines
        else:
            self.dropped += lines
            log.warning("access log write failed (%s); %d lines dropped", error, lines)

    def _write(self, data: bytes) -> None:
        if self._target == "-":
            # Whole lines, at most PIPE_BUF bytes per write: when several processes
            # (`serve --workers`) share one pipe, their lines never interleave.
            out = sys.stdout.buffer
            for chunk in _whole_line_chunks(data, select.PIPE_BUF):
                out.write(chunk)
                out.flush()
            return
        path = self._target
        try:
            if path.stat().st_size > self._max_file_bytes:
                os.replace(path, path.with_name(path.name + ".1"))  # keep one old file
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(data)


def _whole_line_chunks(data: bytes, limit: int):
    start = 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + limit) + 1
        if end <= start:  # one line longer than the limit: alone
            end = data.find(b"\n", start) + 1 or len(data)
        yield data[start:end]
        start = end


_second_cache: list = [None, ""]  # (whole second, its ISO-8601 text up to the fraction's dot)
_milli_cache: list = [None, ""]  # (whole millisecond, its ISO-8601 text): lines come in time order


def _iso_time(wall_ns: int) -> str:
    """UTC ISO-8601 with milliseconds; a second's text is formatted once, and a line in the
    same millisecond as the one before reuses its text."""
    millis = wall_ns // 1_000_000
    if _milli_cache[0] == millis:
        return _milli_cache[1]
    second, fraction = divmod(millis, 1000)
    if _second_cache[0] != second:
        _second_cache[0] = second
        _second_cache[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    text = _milli_cache[1] = f"{_second_cache[1]}{fraction:03d}+00:00"
    _milli_cache[0] = millis
    return text


def _line(ctx: RequestContext, wall_ns: int) -> bytes:
    """One JSON line; durations in milliseconds with three decimals (rounded to the µs)."""
    upstream_ns, own_ns, queued_ns = ctx.upstream_ns, ctx.own_ns, ctx.queued_ns
    return orjson.dumps({
        "time": _iso_time(wall_ns + ctx.ended_ns), "request_id": ctx.request_id, "client": ctx.client,
        "method": ctx.method, "path": ctx.path, "endpoint": ctx.endpoint, "deployment": ctx.deployment,
        "replica": ctx.replica, "status": ctx.status, "code": ctx.error_code, "bytes_in": ctx.bytes_in,
        "bytes_out": ctx.bytes_out, "duration_ms": (ctx.total_ns + 500) // 1000 / 1000,
        "queue_ms": (queued_ns + 500) // 1000 / 1000, "upstream_ms": (upstream_ns + 500) // 1000 / 1000,
        "gateway_ms": (own_ns + 500) // 1000 / 1000,
    }, option=orjson.OPT_APPEND_NEWLINE)
