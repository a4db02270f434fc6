"""How much CPU *other* processes took on the benchmark's cores during a measurement.

On a shared machine (CI runners, a laptop, a VM with noisy neighbours) the
gateway's one core is not really its own, and a figure taken while something
else ran is a figure about that something else.  This meter reads the cores'
busy time (/proc/stat, steal included: a hypervisor's other guests count as
noise too) and subtracts the CPU time of this process and every process below
it (the gateway, its replica, nginx, the fast server, wrk and the generator
workers, reaped or alive); what is left is foreign, in cores.
"""

from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _core_busy(cores: set[int] | None) -> int:
    """Ticks in user, nice, system and steal of the given cores (None: all).

    irq/softirq are left out: loopback traffic is processed there on behalf of
    whoever sent it (mostly us), and no process is charged for it.
    """
    total = 0
    with open("/proc/stat") as handle:
        for line in handle:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            if cores is not None and int(name[3:]) not in cores:
                continue
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
                int(v) for v in fields[:8])
            total += user + nice + system + steal
    return total


def _stat(pid: int) -> tuple[int, list[int]] | None:
    """(parent pid, [utime, stime, cutime, cstime]) of a process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), [int(v) for v in fields[11:15]]


def _own_ticks() -> int:
    """CPU ticks of this process, its reaped children, and every live descendant."""
    parents: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _stat(int(entry))
            if got is not None:
                parents.setdefault(got[0], []).append(int(entry))
                times[int(entry)] = sum(got[1])
    me = os.getpid()
    total, todo = times.get(me, 0), [me]
    while todo:
        for child in parents.get(todo.pop(), []):
            total += times.get(child, 0)
            todo.append(child)
    return total


class NoiseMeter:
    """`with NoiseMeter(cores) as m: ...` then m.foreign_cores (average cores used by others)."""

    def __init__(self, cores: set[int] | None = None) -> None:
        self.cores = cores
        self.foreign_cores: float | None = None

    def __enter__(self) -> "NoiseMeter":
        try:
            self._start = (time.monotonic(), _core_busy(self.cores), _own_ticks())
        except OSError:  # no /proc: not measurable, never fatal
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        try:
            wall = time.monotonic() - self._start[0]
            busy = _core_busy(self.cores) - self._start[1]
            own = _own_ticks() - self._start[2]
        except OSError:
            return
        if wall > 0:
            self.foreign_cores = round(max(0, busy - own) / TICK / wall, 3)
