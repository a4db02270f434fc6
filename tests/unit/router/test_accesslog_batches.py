"""The access log makes each line as its request ends and writes the buffer whole from a
thread: lines keep their order, a flush cut short loses and repeats nothing, a failing
sink or an unencodable value costs lines (counted), never a request."""

from __future__ import annotations

import asyncio
import json

from router.accesslog import AccessLog
from router.context import RequestContext


def contexts(count: int, start: int = 0) -> list[RequestContext]:
    made = []
    for i in range(start, start + count):
        ctx = RequestContext(f"req-{i}", "127.0.0.1", "POST", "/api/v1/endpoint/ep/score")
        ctx.endpoint, ctx.deployment, ctx.status = "ep", "blue", 200
        made.append(ctx)
    return made


def ids(path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


async def test_lines_are_written_in_order_by_the_periodic_flush_and_at_close(tmp_path):
    log = AccessLog(tmp_path / "access.log", flush_interval_s=0.05)
    await log.start()
    for ctx in contexts(100):
        log.record(ctx)
    async with asyncio.timeout(5):
        while log.written < 100:
            await asyncio.sleep(0.01)
    for ctx in contexts(50, start=100):
        log.record(ctx)
    await log.close()
    assert ids(tmp_path / "access.log") == [f"req-{i}" for i in range(150)]
    assert log.written == 150 and log.dropped == 0


async def test_a_flush_cancelled_while_writing_loses_and_repeats_nothing(tmp_path):
    log = AccessLog(tmp_path / "access.log")
    for ctx in contexts(300):
        log.record(ctx)
    flushing = asyncio.get_running_loop().create_task(log._flush())
    await asyncio.sleep(0)  # the buffer is with the writer thread
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    for ctx in contexts(10, start=300):
        log.record(ctx)  # after the cancelled flush: written after its lines, at close
    await log.close()
    assert ids(tmp_path / "access.log") == [f"req-{i}" for i in range(310)]
    assert log.written == 310 and log.dropped == 0


async def test_what_cannot_be_written_or_encoded_is_dropped_and_counted(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    log = AccessLog(taken / "sub" / "access.log", max_pending=5)
    (taken / "sub").write_text("a file where the log's folder should be")
    for ctx in contexts(7):
        log.record(ctx)  # two over max_pending
    odd = contexts(1, start=7)[0]
    odd.path = "/\udcff"  # not UTF-8: no JSON text for it
    log.record(odd)
    assert log.dropped == 3
    await log.close()
    assert log.written == 0 and log.dropped == 8  # the sink refused the five lines
