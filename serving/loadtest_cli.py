"""`scoregate loadtest`: the loadtests harness, mounted on the gateway's CLI."""

from __future__ import annotations


def run_loadtest(argv: list[str]) -> int:
    from loadtests.__main__ import run_cli

    return run_cli(argv, prog="scoregate loadtest")
