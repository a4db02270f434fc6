"""JSON for the model server: orjson on the fast path, the standard library for big integers.

orjson refuses integers beyond 64 bits when it writes and reads them as floats when it
parses; azureml-inference-server-http (the json module) keeps them exact, and so do we.
Only a document that has one pays for the slower module.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_LONG_NUMBER = re.compile(r"\d{19}")  # 2**63 has 19 digits; a shorter run is exact in orjson


def _default(obj: Any) -> Any:
    # Array-likes (numpy without OPT_SERIALIZE_NUMPY coverage, pandas, torch) expose tolist().
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; TypeError names what cannot be written."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise
    return json.dumps(_plain(value), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    """``value`` in the json module's types, written as orjson would have written it (NaN and
    infinities as null; anything else orjson knows — numpy, datetime, dataclasses — through it)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k if k is None or isinstance(k, (str, int, float, bool)) else orjson.loads(dumps(k)): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return orjson.loads(orjson.dumps(value, default=_default, option=_OPTIONS))


def loads(text: str) -> Any:
    """Parse JSON; ValueError when it is not. NaN and Infinity are refused either way."""
    if _LONG_NUMBER.search(text) is None:
        return orjson.loads(text)
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
