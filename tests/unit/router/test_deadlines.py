"""router.upstream.deadlines: asyncio.timeout_at()'s behaviour on one shared timer."""

from __future__ import annotations

import asyncio

import pytest

from router.upstream.deadlines import Deadlines


async def test_a_block_over_its_deadline_gets_timeout_error():
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        with deadlines.at(loop.time() + 0.05):
            await asyncio.sleep(10)
    deadlines.close()


async def test_blocks_that_finish_in_time_are_left_alone_and_others_still_expire():
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()

    async def exchange(wait_s: float, limit_s: float) -> str:
        try:
            with deadlines.at(loop.time() + limit_s):
                await asyncio.sleep(wait_s)
            return "done"
        except TimeoutError:
            return "timeout"

    results = await asyncio.gather(exchange(0, 5), exchange(10, 0.1), exchange(0.01, 5), exchange(10, 0.05),
                                   *(exchange(0, 5) for _ in range(50)))
    assert results[:4] == ["done", "timeout", "done", "timeout"] and set(results[4:]) == {"done"}
    # The task can go on awaiting after a deadline: nothing is left to cancel it.
    await asyncio.sleep(0.01)
    deadlines.close()


async def test_an_outside_cancellation_stays_a_cancellation():
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def exchange():
        with deadlines.at(loop.time() + 5):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(exchange())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()


async def test_a_shorter_deadline_after_a_longer_one_is_kept():
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()

    async def long_one():
        with deadlines.at(loop.time() + 30):
            await asyncio.sleep(10)

    task = asyncio.create_task(long_one())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        with deadlines.at(loop.time() + 0.05):
            await asyncio.sleep(10)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()
