"""Processes a test started indirectly, found by a marker in their command line."""

from __future__ import annotations

import os


def processes_mentioning(marker: bytes) -> set[int]:
    """Pids of the processes whose command line contains `marker` (e.g. a work dir prefix)."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker in handle.read():
                    found.add(int(pid))
        except OSError:
            pass
    return found
