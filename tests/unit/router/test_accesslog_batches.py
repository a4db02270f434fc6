"""The access log makes its lines a slice at a time: requests get the event loop in
between, lines keep their order, and a flush cut short loses and repeats nothing."""

from __future__ import annotations

import asyncio
import json

from router.accesslog import LINES_PER_SLICE, AccessLog
from router.context import RequestContext

COUNT = LINES_PER_SLICE * 3 + 5


def contexts(count: int) -> list[RequestContext]:
    made = []
    for i in range(count):
        ctx = RequestContext(f"req-{i}", "127.0.0.1", "POST", "/api/v1/endpoint/ep/score")
        ctx.endpoint, ctx.deployment, ctx.status = "ep", "blue", 200
        made.append(ctx)
    return made


def ids(path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text().splitlines()]


async def test_other_callbacks_run_between_slices_and_lines_stay_in_order(tmp_path):
    log = AccessLog(tmp_path / "access.log")
    for ctx in contexts(COUNT):
        log.record(ctx)
    turns = []
    loop = asyncio.get_running_loop()

    def request_arrives() -> None:  # stands for a request's callback while lines are made
        turns.append(len(log._built))
        if len(turns) < 4:
            loop.call_soon(request_arrives)

    loop.call_soon(request_arrives)
    await log.close()
    assert turns[:3] == [1, 2, 3]  # the loop turned after each slice of lines
    assert ids(tmp_path / "access.log") == [f"req-{i}" for i in range(COUNT)]
    assert log.written == COUNT and log.dropped == 0


async def test_a_flush_cancelled_between_slices_loses_and_repeats_nothing(tmp_path):
    log = AccessLog(tmp_path / "access.log")
    for ctx in contexts(COUNT):
        log.record(ctx)
    flushing = asyncio.get_running_loop().create_task(log._flush())
    await asyncio.sleep(0)  # the first slice is made, then the flush yields
    await asyncio.sleep(0)
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    assert 0 < log._built_lines < COUNT  # cut short half-way
    await log.close()
    assert ids(tmp_path / "access.log") == [f"req-{i}" for i in range(COUNT)]
    assert log.written == COUNT
