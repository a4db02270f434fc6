"""The aiohttp application: health, ``POST``/``GET``/``OPTIONS /score`` and ``GET /swagger.json``.

``run()`` is user code that may block for seconds, so it always runs in a
dedicated thread pool; the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any, Awaitable, Callable

from aiohttp import web

from serving.modelserver import ids
from serving.modelserver.inputs import named_arguments, query_input
from serving.modelserver.loader import ScoringScript
from serving.modelserver.responses import JSON, encode_result, error_response, exception_message

log = logging.getLogger("scoregate.modelserver")

MAX_BODY_BYTES = 100 * 1024 * 1024
# The longest a request body may take to arrive: azmlinfsrv's WORKER_TIMEOUT, after which its
# gunicorn kills a worker stuck in a request (without an answer); we answer 408 instead.
BODY_TIMEOUT_S = 300.0
HEALTHY = "Healthy"

_SCRIPT_KEY = web.AppKey("script", ScoringScript)
_EXECUTOR_KEY = web.AppKey("executor", Executor)
_SWAGGER_KEY = web.AppKey("swagger", bytes)
_SLOTS_KEY = web.AppKey("slots", asyncio.Semaphore)
_BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_headers(request: web.Request) -> dict[str, str]:
    """The headers as azureml-inference-server-http gives them to run(): a plain dict,
    names in Title-Case (``X-Request-Id``), repeated ones joined with ", "."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.title()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


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


SCORE_METHODS = "GET, POST, OPTIONS"


async def score_options(request: web.Request) -> web.Response:
    """``OPTIONS /score``: an empty 200, as azmlinfsrv answers it (a CORS preflight finds the
    route), with the methods the route takes; run() is not called."""
    return web.Response(headers={"Allow": SCORE_METHODS})


def _is_json(content_type: str | None) -> bool:
    """Flask's ``request.is_json``, which azmlinfsrv asks of an @input_schema POST:
    ``application/json`` or ``application/*+json``, any case, whatever its parameters."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/")
                                                  and media_type.endswith("+json"))


def _body_too_slow(request: web.Request, timeout_s: float) -> web.Response:
    """408, then the connection is closed: what is left of the body is never read."""
    received = request.content.total_bytes
    expected = f" of {request.content_length}" if request.content_length is not None else ""
    log.warning("request %s: the body did not arrive within %g s (%d%s bytes); 408",
                ids.request_id(request), timeout_s, received, expected)
    response = error_response(
        408, "ClientRequestTimeout",
        f"the request body did not arrive within {timeout_s:g} s ({received}{expected} bytes received)",
        ids.request_id(request))
    response.force_close()
    return response


async def _input(request: web.Request, script: ScoringScript) -> str | dict[str, Any] | web.Response:
    """run()'s input for this request, or the error answer that replaces it."""
    if request.method == "GET":
        try:
            return query_input(script, request.query)
        except ValueError as exc:
            return error_response(400, "InvalidRequestBody", str(exc), ids.request_id(request))
    if script.named_inputs is not None and not _is_json(request.headers.get("Content-Type")):
        # Before the body is read, as azmlinfsrv refuses it; aiohttp reads what is left (for
        # at most 10 s) so that the connection stays usable.
        sent = request.headers.get("Content-Type")
        return error_response(
            415, "UnsupportedMediaType",
            "run() is decorated with @input_schema: send the body as JSON with Content-Type: application/json "
            f"({'got ' + repr(sent) if sent else 'no Content-Type was sent'})",
            ids.request_id(request))
    if request.content.is_eof():  # the usual case: the body came with the head
        body = await request.read()
    else:
        timeout_s = request.app[_BODY_TIMEOUT_KEY]
        try:
            async with asyncio.timeout(timeout_s):
                body = await request.read()
        except TimeoutError:
            return _body_too_slow(request, timeout_s)
    try:
        raw_data = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error_response(400, "InvalidRequestBody",
                              f"request body is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                              ids.request_id(request))
    if script.named_inputs is None:
        return raw_data
    try:
        return named_arguments(script, raw_data)
    except ValueError as exc:
        return error_response(400, "InvalidRequestBody", str(exc), ids.request_id(request))


async def score(request: web.Request) -> web.Response:
    loop = asyncio.get_running_loop()
    app = request.app
    script = app[_SCRIPT_KEY]
    data = await _input(request, script)
    if isinstance(data, web.Response):
        return data
    request_id = ids.request_id(request)
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
        response = error_response(exc.status, type(exc).__name__.removeprefix("HTTP"), message,
                                  ids.request_id(request))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def _add_response_ids(request: web.Request, response: web.StreamResponse) -> None:
    ids.add_response_ids(request, response)


def make_app(script: ScoringScript, executor: Executor, swagger_document: bytes,
             threads: int = 1, body_timeout_s: float = BODY_TIMEOUT_S) -> web.Application:
    """Build the application; the caller owns the executor (of ``threads`` threads)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[_SCRIPT_KEY] = script
    app[_EXECUTOR_KEY] = executor
    app[_SLOTS_KEY] = asyncio.Semaphore(threads)
    app[_SWAGGER_KEY] = swagger_document
    app[_BODY_TIMEOUT_KEY] = body_timeout_s
    app.on_response_prepare.append(_add_response_ids)
    app.router.add_get("/", health)
    app.router.add_get("/ready", health)
    app.router.add_post("/score", score)
    app.router.add_get("/score", score, allow_head=False)  # HEAD would run run() for nothing
    app.router.add_route("OPTIONS", "/score", score_options)
    app.router.add_get("/swagger.json", swagger)
    return app
