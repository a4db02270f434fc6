"""Validate batch settings, the same way for YAML deployments and per-job overrides.

A YAML error becomes a ManifestError (file + field), an API error a 422 naming the
field; both come from the SettingsError raised here, so the rules live in one place.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any, Mapping

from .resources import LOGGING_LEVELS, OUTPUT_ACTIONS, BatchSettings, RetrySettings

SETTING_NAMES = ("mini_batch_size", "instance_count", "max_concurrency_per_instance", "error_threshold",
                 "retry_settings", "output_action", "output_file_name", "logging_level")
_RETRY_NAMES = ("max_retries", "timeout")
FILE_NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
LOGS_FOLDER = "logs"  # next to the output file: STATE_DIR/batch/jobs/JOB/logs/worker-N.log

MAX_MINI_BATCH_SIZE = 100_000
MAX_INSTANCES = 64
MAX_CONCURRENCY = 64
MAX_RETRIES = 100
MAX_TIMEOUT_S = 24 * 3600.0


class SettingsError(ValueError):
    """One setting is wrong; `field` is its full dotted name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _integer(value: Any, field: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(field, f"must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise SettingsError(field, f"must be from {minimum} to {maximum}, got {value}")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    text = value.lower() if isinstance(value, str) else value
    if text not in choices:
        raise SettingsError(field, f"must be one of {', '.join(choices)}, got {value!r}")
    return text


def _retry(value: Any, field: str, base: RetrySettings) -> RetrySettings:
    if not isinstance(value, Mapping):
        raise SettingsError(field, f"must be a mapping with {' and '.join(_RETRY_NAMES)}")
    for key in value:
        if key not in _RETRY_NAMES:
            raise SettingsError(f"{field}.{key}", f"unknown field (expected one of: {', '.join(_RETRY_NAMES)})")
    out = base
    if "max_retries" in value:
        out = replace(out, max_retries=_integer(value["max_retries"], f"{field}.max_retries", 0, MAX_RETRIES))
    if "timeout" in value:
        timeout = value["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or not 0.1 <= timeout <= MAX_TIMEOUT_S:
            raise SettingsError(f"{field}.timeout", f"must be a number of seconds from 0.1 to {MAX_TIMEOUT_S:g},"
                                f" got {timeout!r}")
        out = replace(out, timeout=float(timeout))
    return out


def apply_settings(raw: Mapping, base: BatchSettings = BatchSettings(), prefix: str = "") -> BatchSettings:
    """`base` with the settings in `raw` applied; unknown names and bad values refused."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = f"{prefix}{key}"
        if key not in SETTING_NAMES:
            raise SettingsError(field, f"unknown setting (expected one of: {', '.join(SETTING_NAMES)})")
        if key == "mini_batch_size":
            values[key] = _integer(value, field, 1, MAX_MINI_BATCH_SIZE)
        elif key == "instance_count":
            values[key] = _integer(value, field, 1, MAX_INSTANCES)
        elif key == "max_concurrency_per_instance":
            values[key] = _integer(value, field, 1, MAX_CONCURRENCY)
        elif key == "error_threshold":
            values[key] = _integer(value, field, -1, 2**62)
        elif key == "retry_settings":
            values[key] = _retry(value, field, base.retry_settings)
        elif key == "output_action":
            values[key] = _choice(value, field, OUTPUT_ACTIONS)
        elif key == "logging_level":
            values[key] = _choice(value, field, LOGGING_LEVELS)
        elif key == "output_file_name":
            if not isinstance(value, str) or not FILE_NAME_RULE.match(value) or ".." in value:
                raise SettingsError(field, "must be a plain file name (letters, digits, '.', '_', '-';"
                                    f" no folders), got {value!r}")
            if value == LOGS_FOLDER:
                raise SettingsError(field, f"'{LOGS_FOLDER}' is the folder of the job's worker logs;"
                                    " choose another name")
            values[key] = value
    return replace(base, **values)
