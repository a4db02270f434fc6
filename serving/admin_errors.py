"""Request ids on the admin port: every answer names its request, every error body too.

Why: the scoring port's errors carry `{code, message, request_id}` and an `x-request-id`
header; the admin port's handlers (management API, batch admin, status page) answer
`{code, message}`, so a failed `scoregate` call could not be matched with the gateway's
log. One middleware, outermost, gives every answer the caller's sane `x-request-id` (or
a new one, router.context's rule) and adds it to each JSON error body that lacks it —
the handlers keep returning their plain errors. The header is set as each answer is
prepared, so streamed answers (logs, job outputs) have it too. `install(app)` adds both.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from router.aiohttp_hardening import REQUEST_ID_HEADER
from router.context import request_id_from

log = logging.getLogger("scoregate.admin")

# A typed key where aiohttp has them (3.11+; a str key warns there), a str before.
_KEY = web.RequestKey("scoregate.request_id", str) if hasattr(web, "RequestKey") else "scoregate.request_id"


def install(app: web.Application) -> None:
    """Make `app` (not started yet) name every request; outermost of its middlewares."""
    app.middlewares.insert(0, request_ids)
    app.on_response_prepare.append(_stamp)


async def _stamp(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def request_ids(request: web.Request, handler):
    request_id = request[_KEY] = request_id_from(request.headers.get(REQUEST_ID_HEADER))
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (unknown path, wrong method): JSON like every other error.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = web.json_response({"code": exc.reason.replace(" ", ""), "message": exc.text or exc.reason},
                                     status=exc.status, headers=allow)
    except Exception:
        # A defect of ours: the caller gets the id to report, the log has the traceback.
        log.exception("admin request %s (%s %s) failed", request_id, request.method, request.path)
        response = web.json_response({"code": "InternalError", "message": "the gateway failed to handle the request"},
                                     status=500)
    if response.status >= 400 and isinstance(response, web.Response) and response.content_type == "application/json":
        _add_request_id(response, request_id)
    return response


def _add_request_id(response: web.Response, request_id: str) -> None:
    try:
        body = orjson.loads(response.body)
    except (orjson.JSONDecodeError, TypeError):
        return
    if isinstance(body, dict) and "code" in body and "request_id" not in body:
        body["request_id"] = request_id
        response.body = orjson.dumps(body)
