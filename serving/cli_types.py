"""argparse value types of the CLI: a bad value is a usage error (exit code 2) that names
the flag, before any request is made. Shared by serving/cli.py and serving/batch/cli.py."""

from __future__ import annotations

import argparse
import sys


def within(convert, low, high, what: str, bounds: str):
    """An argparse type: `convert(text)` from `low` to `high`, anything else refused (a port
    is not wrapped around, a share not clamped)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"not {what}: {text!r} ({bounds})")
        return value
    return parse


port = within(int, 0, 65535, "a port number", "0 to 65535")  # 0: any free port
seconds = within(float, 0.0, sys.float_info.max, "a number of seconds", "0 or more")
share = within(float, 0.0, 1.0, "a share", "from 0 to 1")
retention_days = within(float, 0.0, 36500.0, "a number of days", "0 (keep every job) to 36500")
line_count = within(int, 0, 10_000, "a number of lines", "0 to 10000")


def log_level(text: str) -> str:
    from .settings_file import LOG_LEVELS

    level = str(text).upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"not a log level: {text!r} ({', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]})")
    return level


def budget(text: str) -> float:
    """A duration of more than nothing: a budget of 0s fails every rollout at once."""
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def duration(text: str) -> float:
    """"20m", "90s", "1h", "1h30m" or plain seconds → seconds (settings_file.parse_duration)."""
    from .settings_file import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def lifetime(text: str) -> float:
    """A token's lifetime in the flag's own syntax: the server's check (lifetime_s from 1 to
    86400) stays, but speaks of a JSON field the user never wrote."""
    from .tokens import MAX_LIFETIME_S

    value = duration(text)
    if not 1 <= value <= MAX_LIFETIME_S:
        raise argparse.ArgumentTypeError(f"must be from 1s to {MAX_LIFETIME_S // 3600}h, got {text!r}")
    return value
