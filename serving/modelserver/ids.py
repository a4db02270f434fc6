"""Request ids, set and echoed on every answer as azureml-inference-server-http does.

Clients written for Azure ML read ``x-request-id`` (the caller's, else a new UUID),
``x-ms-request-id`` (the caller's, else ``x-ms-client-request-id``, else the request id)
and ``x-ms-client-request-id``; Office-style callers read ``TraceId`` back.
"""

from __future__ import annotations

import uuid

from aiohttp import web

REQUEST_ID = "x-request-id"
LEGACY_REQUEST_ID = "x-ms-request-id"
CLIENT_REQUEST_ID = "x-ms-client-request-id"
TRACE_ID = "TraceId"
_KEY = web.RequestKey("request_id", str)


def request_id(request: web.Request) -> str:
    """The caller's ``x-request-id``, else one made once for this request."""
    known = request.get(_KEY)
    if known is None:
        known = request[_KEY] = request.headers.get(REQUEST_ID) or str(uuid.uuid4())
    return known


def add_response_ids(request: web.Request, response: web.StreamResponse) -> None:
    """Set the id headers azmlinfsrv sets (its after_request), on every answer."""
    headers = response.headers
    rid = headers[REQUEST_ID] = request_id(request)
    legacy = request.headers.get(LEGACY_REQUEST_ID)
    client = request.headers.get(CLIENT_REQUEST_ID)
    headers[LEGACY_REQUEST_ID] = legacy or client or rid
    if client or legacy:
        headers[CLIENT_REQUEST_ID] = client or legacy
    trace = request.headers.get(TRACE_ID)
    if trace is not None:
        headers[TRACE_ID] = trace
