"""Take a serving process's startup objects out of the garbage collector's walks.

Once a gateway process serves, it holds a few hundred thousand objects that live as long
as it does: modules, classes and functions of aiohttp, prometheus_client, the kubernetes
client, TLS contexts, the first routing snapshot. Every full collection of CPython's
cyclic garbage collector walks all of them — about 25 ms per full collection on the
benchmark machine, every few seconds under load, a pause every request in flight waits
through. gc.freeze() moves them to a permanent generation that collections skip (they are
still freed by reference counting if they ever go); later objects are collected as
before. Called once per process, when it starts serving — never in library code, so a
test process that runs gateways in-process keeps a normal collector.
"""

from __future__ import annotations

import asyncio
import gc
import logging

log = logging.getLogger("scoregate.gc")


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is left; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d startup objects moved out of the garbage collector's walks", frozen)
    return frozen


async def freeze_once_serving(serving: asyncio.Event) -> None:
    """Freeze when `serving` is set (run as a task beside the process's main coroutine)."""
    await serving.wait()
    freeze_startup_objects()
