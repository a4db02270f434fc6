"""Process lifetime: never outlive the gateway, stop cleanly on signals.

A replica left running after its gateway died holds a port and memory that no
one will ever reclaim, hence two independent guards (PDEATHSIG and polling).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from typing import Callable

log = logging.getLogger("scoregate.modelserver")

PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send us ``sig`` when our parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


async def watch_parent(initial_ppid: int, on_gone: Callable[[str], None],
                       interval: float = PARENT_POLL_SECONDS) -> None:
    """Poll ``getppid()``: once re-parented, our parent is gone."""
    while True:
        await asyncio.sleep(interval)
        ppid = os.getppid()
        if ppid != initial_ppid:
            on_gone(f"parent process {initial_ppid} went away (now {ppid})")
            return


def install_stop_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[str], None]) -> None:
    """SIGTERM/SIGINT request a graceful stop; a second one forces an exit."""
    received: list[int] = []

    def handler(signum: int) -> None:
        if received:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(1)
        received.append(signum)
        on_stop(f"received {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Linux
            pass


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed, else the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop
