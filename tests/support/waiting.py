"""Waiting in async tests for something the code under test does in the background."""

from __future__ import annotations

import asyncio
import time


async def until(condition, timeout_s: float, what: str):
    """condition()'s first true value, polled every 50 ms; AssertionError naming `what`
    after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value
