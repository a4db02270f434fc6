"""The aiohttp application: health, ``POST /score`` and ``GET /swagger.json``.

``run()`` is user code that may block for seconds, so it always runs in a
dedicated thread pool; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import Executor
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from serving.modelserver.loader import ScoringScript
from serving.modelserver.responses import (
    JSON,
    REQUEST_ID_HEADER,
    encode_result,
    error_response,
    exception_message,
)

log = logging.getLogger("scoregate.modelserver")

MAX_BODY_BYTES = 100 * 1024 * 1024
HEALTHY = "Healthy"

_SCRIPT_KEY = web.AppKey("script", ScoringScript)
_EXECUTOR_KEY = web.AppKey("executor", Executor)
_SWAGGER_KEY = web.AppKey("swagger", bytes)
_SLOTS_KEY = web.AppKey("slots", asyncio.Semaphore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_id(request: web.Request) -> str | None:
    return request.headers.get(REQUEST_ID_HEADER)


def _request_headers(request: web.Request) -> dict[str, str]:
    """The headers as azureml-inference-server-http gives them to run(): a plain dict,
    names in Title-Case (``X-Request-Id``), repeated ones joined with ", "."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.title()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _named_arguments(script: ScoringScript, raw_data: str) -> dict[str, Any]:
    """The keyword arguments of an @input_schema run(): the JSON body's fields it names,
    or their defaults. ValueError says what the body lacks."""
    try:
        body = orjson.loads(raw_data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not JSON ({exc}); run() takes a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: run() takes its fields by name "
                         f"({', '.join(name for name, _ in script.named_inputs)})")
    arguments = {}
    for name, default in script.named_inputs:
        value = body.get(name, default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"the body has no {name!r}, which run() requires")
        arguments[name] = value
    return arguments


def _run_and_encode(script: ScoringScript, data: str | dict[str, Any], request_id: str | None,
                    headers: dict[str, str] | None) -> web.Response:
    """Runs in a scoring thread: call run() (with the body, or with its fields by name for
    an @input_schema run), then encode its result."""
    extra = {} if headers is None else {"request_headers": headers}
    try:
        result = script.run(**data, **extra) if isinstance(data, dict) else script.run(data, **extra)
    except (Exception, SystemExit) as exc:
        log.error("run() raised (request id %s)", request_id, exc_info=True)
        return error_response(500, "ScoringScriptError", exception_message(exc), request_id)
    return encode_result(result, request_id)


async def health(request: web.Request) -> web.Response:
    return web.Response(text=HEALTHY)


async def swagger(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SWAGGER_KEY], content_type=JSON)


async def score(request: web.Request) -> web.Response:
    request_id = _request_id(request)
    body = await request.read()
    try:
        raw_data = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error_response(
            400,
            "InvalidRequestBody",
            f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})",
            request_id,
        )
    loop = asyncio.get_running_loop()
    app = request.app
    script = app[_SCRIPT_KEY]
    data: str | dict[str, Any] = raw_data
    if script.named_inputs is not None:
        try:
            data = _named_arguments(script, raw_data)
        except ValueError as exc:
            return error_response(400, "InvalidRequestBody", str(exc), request_id)
    headers = _request_headers(request) if script.takes_headers else None
    # Requests wait for a scoring thread here, not in the executor's queue, so that one
    # whose client left meanwhile (the gateway's request_timeout_ms, a client that gave
    # up) is dropped instead of running later and delaying every request behind it.
    async with app[_SLOTS_KEY]:
        transport = request.transport
        if transport is None or transport.is_closing():
            log.warning("request %s: the client went away while it waited for a scoring thread; "
                        "run() not called", request_id)
            return error_response(503, "ClientGone", "the client went away before run() started", request_id)
        return await loop.run_in_executor(
            app[_EXECUTOR_KEY], _run_and_encode, script, data, request_id, headers
        )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413) get the same JSON error shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(exc.status, type(exc).__name__.removeprefix("HTTP"), message, _request_id(request))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = _request_id(request)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def make_app(script: ScoringScript, executor: Executor, swagger_document: bytes,
             threads: int = 1) -> web.Application:
    """Build the application; the caller owns the executor (of ``threads`` threads)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[_SCRIPT_KEY] = script
    app[_EXECUTOR_KEY] = executor
    app[_SLOTS_KEY] = asyncio.Semaphore(threads)
    app[_SWAGGER_KEY] = swagger_document
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_get("/", health)
    app.router.add_get("/ready", health)
    app.router.add_post("/score", score)
    app.router.add_get("/swagger.json", swagger)
    return app
