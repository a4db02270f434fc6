"""Turn what ``run()`` returned (or raised) into HTTP responses.

Encoding happens in the scoring thread, not on the event loop, so a large result
never stalls other connections; this module is therefore plain synchronous code.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from serving.modelserver import jsoncodec

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
# What azureml-inference-server-http answers for a run() that returned None (AMLResponse).
EMPTY_OBJECT = b"{}"


def error_response(status: int, code: str, message: str, request_id: str | None) -> web.Response:
    """Every error body has the same JSON shape as the gateway's own errors."""
    body = orjson.dumps({"code": code, "message": message, "request_id": request_id})
    return web.Response(status=status, body=body, content_type=JSON)


def exception_message(exc: BaseException) -> str:
    """``ValueError: bad input`` — the type tells users where to look."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a user's __str__ may raise; the type still says something
        text = "(its message could not be read: str() of it raised)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def encode_result(result: Any, request_id: str | None) -> web.Response:
    """bytes as is, a ready ``web.Response`` untouched, None as ``{}``, anything else as JSON."""
    if isinstance(result, web.Response):
        if result.prepared:  # sending it again would leave the client waiting forever
            return error_response(
                500,
                "ScoringScriptError",
                "run() returned an aiohttp Response that was already sent; return a new one for each request",
                request_id,
            )
        return result
    if isinstance(result, (bytes, bytearray, memoryview)):
        return web.Response(body=bytes(result), content_type=OCTET_STREAM)
    if result is None:
        return web.Response(body=EMPTY_OBJECT, content_type=JSON)
    try:
        body = jsoncodec.dumps(result)
    except TypeError as exc:
        return error_response(
            500,
            "ScoringScriptError",
            f"run() returned a value that cannot be serialized to JSON: {exception_message(exc)}",
            request_id,
        )
    return web.Response(body=body, content_type=JSON)
