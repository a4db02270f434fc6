"""`scoregate loadtest`: the loadtests harness, mounted on the gateway's CLI."""

from __future__ import annotations

import sys

# What the harness needs beyond the gateway's own packages (the `loadtests` extra).
EXTRA_MODULES = ("hdrh", "matplotlib")


def run_loadtest(argv: list[str]) -> int:
    try:
        from loadtests.__main__ import run_cli
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        sys.stderr.write(f"error: scoregate loadtest needs the loadtests extra ({exc.name} is not installed): "
                         "pip install 'scoregate[loadtests]'\n")
        return 2
    return run_cli(argv, prog="scoregate loadtest")
