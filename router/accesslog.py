"""The access log: one JSON line per request, written off the hot path.

record() runs in the request's handler and only appends a tuple to a bounded deque;
a background task turns batches into JSON lines and writes them from a worker thread.
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
from collections import deque
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
        self._pending: deque[tuple] = deque()
        self._max_pending = max_pending
        self._flush_interval_s = flush_interval_s
        self._max_file_bytes = max_file_bytes
        self._rng = rng or random.Random()
        self._task: asyncio.Task | None = None
        self.dropped = 0
        self.written = 0

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def record(self, ctx: RequestContext, method: str, path: str) -> None:
        if self._target is None:
            return
        if ctx.status < 400 and self.sample_rate < 1.0 and self._rng.random() >= self.sample_rate:
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        # Raw numbers here; the line is made off the request's path (_line).
        self._pending.append((
            time.time(), ctx.request_id, ctx.client, method, path, ctx.endpoint, ctx.deployment, ctx.replica,
            ctx.status, ctx.error_code, ctx.bytes_in, ctx.bytes_out, ctx.started_ns, ctx.queued_ns,
            ctx.upstream_started_ns, ctx.upstream_ended_ns, ctx.ended_ns or time.perf_counter_ns()))

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
        if self._pending:
            await self._flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            if self._pending:
                await self._flush()

    async def _flush(self) -> None:
        batch = [self._pending.popleft() for _ in range(len(self._pending))]
        data = b"".join(_line(entry) for entry in batch)
        try:
            await asyncio.to_thread(self._write, data)
            self.written += len(batch)
        except OSError as exc:
            self.dropped += len(batch)
            log.warning("access log write failed (%s); %d lines dropped", exc, len(batch))

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


_second_cache: list = [None, ""]  # (whole second, its ISO-8601 text without the fraction)


def _iso_time(timestamp: float) -> str:
    """UTC ISO-8601 with milliseconds; the second's text is formatted once per second."""
    second = int(timestamp)
    if _second_cache[0] != second:
        _second_cache[0] = second
        _second_cache[1] = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second_cache[1]}.{int((timestamp - second) * 1000):03d}+00:00"


def _ms(ns: int) -> float:
    """Nanoseconds as milliseconds with three decimals."""
    return (ns + 500) // 1000 / 1000


def _line(entry: tuple) -> bytes:
    (timestamp, request_id, client, method, path, endpoint, deployment, replica, status, code, bytes_in,
     bytes_out, started_ns, queued_ns, upstream_started_ns, upstream_ended_ns, ended_ns) = entry
    duration_ns = ended_ns - started_ns
    upstream_ns = ((upstream_ended_ns or ended_ns) - upstream_started_ns) if upstream_started_ns else 0
    return orjson.dumps({
        "time": _iso_time(timestamp), "request_id": request_id, "client": client, "method": method,
        "path": path, "endpoint": endpoint, "deployment": deployment, "replica": replica, "status": status,
        "code": code, "bytes_in": bytes_in, "bytes_out": bytes_out, "duration_ms": _ms(duration_ns),
        "queue_ms": _ms(queued_ns), "upstream_ms": _ms(upstream_ns),
        "gateway_ms": _ms(max(0, duration_ns - queued_ns - upstream_ns)),
    }, option=orjson.OPT_APPEND_NEWLINE)
