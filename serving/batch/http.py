"""Job routes on the HTTPS scoring port, authenticated like online endpoints.

    POST /api/v1/batch/{endpoint}/jobs                 submit → 202 once committed
    GET  /api/v1/batch/{endpoint}/jobs                 list (newest first, ?limit=N: 1..1000, 100)
    GET  /api/v1/batch/{endpoint}/jobs/{id}            show
    POST /api/v1/batch/{endpoint}/jobs/{id}/cancel     cancel → the job (409 if finished)
    GET  /api/v1/batch/{endpoint}/jobs/{id}/output     the output file (409 until finished)
    GET  /api/v1/batch/{endpoint}/jobs/{id}/logs       the job's log, text (serving.batch.joblog)
Every refusal is JSON {code, message, request_id}, as on the online path. Failed
authentication is throttled per client with the scoring path's AuthThrottle
(router/auth_throttle.py): the gateway gives both the same one, so guesses on either
path count together, and a throttled client gets the same 429 `AuthThrottled` with
`Retry-After` here as there.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket

from aiohttp import web

from router import AuthThrottle, AuthThrottled
from router.auth import bearer_credential
from router.context import request_id_from
from router.handlers import error_response

from .jobs import OUTPUT_NOT_WRITTEN, TERMINAL, JobRecord, job_settings
from .requests import RequestError, invalid, parse_job_request
from .store import BatchEndpointRecord

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}\Z")
_KNOWN = [(re.compile(r"^/api/v1/batch/[^/]+/jobs/?\Z"), "GET, POST"),
          (re.compile(r"^/api/v1/batch/[^/]+/jobs/[^/]+/?\Z"), "GET"),
          (re.compile(r"^/api/v1/batch/[^/]+/jobs/[^/]+/cancel/?\Z"), "POST"),
          (re.compile(r"^/api/v1/batch/[^/]+/jobs/[^/]+/output/?\Z"), "GET"),
          (re.compile(r"^/api/v1/batch/[^/]+/jobs/[^/]+/logs/?\Z"), "GET")]
_CHUNK = 64 * 1024
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000  # jobs in one answer of the job list
# The caller's address, as a worker's BatchProxy (serving/workers/batch_proxy.py) saw it:
# believed only on the private Unix socket the proxies use, never from a TCP caller.
CLIENT_ADDRESS_HEADER = "x-scoregate-client-address"
log = logging.getLogger("scoregate.batch")


def client_address(request: web.Request) -> str | None:
    """Whom the failed-auth throttle counts: the TCP peer, or behind `--workers` the
    peer the worker passing the request on saw."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return request.headers.get(CLIENT_ADDRESS_HEADER) or None
    return request.remote


def _list_limit(given: str) -> int:
    """?limit=N of the job list: a whole number from 1 to MAX_LIST_LIMIT, or a 422 saying so
    (out-of-range values were quietly clamped, so a caller never learnt its list was cut)."""
    limit = int(given) if re.fullmatch(r"[0-9]{1,4}", given) else 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise invalid(f"limit: must be a whole number from 1 to {MAX_LIST_LIMIT}, got {given!r}")
    return limit


class JobRoutes:
    def __init__(self, service, auth_throttle: AuthThrottle | None = None) -> None:
        self._service = service
        self._auth_throttle = auth_throttle if auth_throttle is not None else AuthThrottle()

    def routes(self) -> list[web.RouteDef]:
        p = "/api/v1/batch/{endpoint}/jobs"
        routes = [(web.post, p, self.submit), (web.get, p, self.list_jobs), (web.get, p + "/{job}", self.show),
                  (web.post, p + "/{job}/cancel", self.cancel), (web.get, p + "/{job}/output", self.output),
                  (web.get, p + "/{job}/logs", self.logs)]
        # with or without a trailing slash, as _KNOWN: GET .../jobs/ is the list, not a 405
        return [route(path + slash, self._wrap(handler))
                for route, path, handler in routes for slash in ("", "/")] + \
            [web.route("*", "/api/v1/batch/{tail:.*}", self.unknown)]

    def _wrap(self, handler):
        async def handle(request: web.Request) -> web.StreamResponse:
            request_id = request_id_from(request.headers.get("x-request-id"))
            try:
                response = await handler(request, await self._authorized(request))
            except RequestError as exc:
                return error_response(exc.status, exc.code, exc.message, request_id,
                                      {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None)
            except AuthThrottled as exc:
                return error_response(exc.status, exc.code, exc.message, request_id, exc.headers)
            except Exception:
                log.exception("batch request %s failed inside the gateway", request_id)
                return error_response(500, "InternalError", "the gateway failed to handle the request", request_id)
            response.headers["x-request-id"] = request_id
            return response

        return handle

    async def unknown(self, request: web.Request) -> web.Response:
        request_id = request_id_from(request.headers.get("x-request-id"))
        for pattern, allowed in _KNOWN:
            if pattern.match(request.path):
                return error_response(405, "MethodNotAllowed", f"{request.path} takes {allowed}", request_id,
                                      {"Allow": allowed})
        return error_response(404, "NotFound", "no such route; batch jobs are under"
                              " /api/v1/batch/{endpoint}/jobs", request_id)

    async def _authorized(self, request: web.Request) -> BatchEndpointRecord:
        name = request.match_info["endpoint"]
        record = await asyncio.to_thread(self._service.store.get_endpoint, name)
        if record is None:
            raise RequestError(404, "EndpointNotFound", f"no batch endpoint '{name}'")
        client = client_address(request)
        self._auth_throttle.check(client)  # as router/pipeline.py: before the credential is looked at
        if record.endpoint.auth_mode == "none":
            return record
        credential = bearer_credential(request.headers.get("Authorization"))
        if credential is None:
            self._auth_throttle.failed(client)
            raise RequestError(401, "Unauthorized", "missing credential: send 'Authorization: Bearer <key>'")
        matched = False
        for key in record.keys:  # every key, no early exit: the timing tells nothing
            matched |= hmac.compare_digest(credential, key.encode())
        if not matched:
            self._auth_throttle.failed(client)
            raise RequestError(401, "Unauthorized", "the key is not valid for this endpoint")
        return record

    async def _job(self, request: web.Request, record: BatchEndpointRecord) -> JobRecord:
        job_id = request.match_info["job"]
        job = None
        if _JOB_ID.match(job_id):
            job = await asyncio.to_thread(self._service.jobs.get, job_id, record.endpoint.name)
        if job is None:
            raise RequestError(404, "JobNotFound", f"no job '{job_id}' on batch endpoint '{record.endpoint.name}'")
        return job

    def _base(self, request: web.Request) -> str:
        return self._service.scoring_url or str(request.url.origin())

    async def _view(self, request: web.Request, job: JobRecord, status: int = 200) -> web.Response:
        view = await asyncio.to_thread(self._service.view, job, self._base(request))
        return web.json_response(view, status=status)

    # -- handlers -----------------------------------------------------------------------------
    async def submit(self, request: web.Request, record: BatchEndpointRecord) -> web.Response:
        body = await self._read_body(request)
        job = await self._service.submit(record.endpoint.name, parse_job_request(body))
        response = await self._view(request, job, 202)
        response.headers["Location"] = f"{self._base(request)}/api/v1/batch/{job.endpoint_name}/jobs/{job.id}"
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._service.max_request_bytes
        too_large = RequestError(413, "PayloadTooLarge", f"the request body exceeds {limit} bytes; put large"
                                 " inputs in a file under a data root and send its path")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def list_jobs(self, request: web.Request, record: BatchEndpointRecord) -> web.Response:
        limit = _list_limit(request.query.get("limit", str(DEFAULT_LIST_LIMIT)))
        jobs = await asyncio.to_thread(self._service.jobs.list, record.endpoint.name, limit)
        base = self._base(request)
        views = await asyncio.to_thread(lambda: [self._service.view(j, base) for j in jobs])
        return web.json_response(views)

    async def show(self, request: web.Request, record: BatchEndpointRecord) -> web.Response:
        return await self._view(request, await self._job(request, record))

    async def cancel(self, request: web.Request, record: BatchEndpointRecord) -> web.Response:
        job = await self._job(request, record)
        if not await self._service.cancel_job(job.id):
            current = await asyncio.to_thread(self._service.jobs.get, job.id)
            status = current.status if current else job.status
            raise RequestError(409, "JobFinished", f"job '{job.id}' has already finished ({status})")
        return await self._view(request, await self._job(request, record))

    async def logs(self, request: web.Request, record: BatchEndpointRecord) -> web.Response:
        """The runner's log of the job; not the workers' (the scoring script's output and
        tracebacks name server paths: `scoregate job logs` shows them, over the admin port)."""
        job = await self._job(request, record)
        text = await asyncio.to_thread(self._service.job_logs, job, workers=False)
        return web.Response(text=text, content_type="text/plain")

    async def output(self, request: web.Request, record: BatchEndpointRecord) -> web.StreamResponse:
        job = await self._job(request, record)
        if not job.finalized or job.status not in TERMINAL:
            if job.status in TERMINAL and OUTPUT_NOT_WRITTEN in (job.error or ""):
                raise RequestError(409, "OutputNotReady", f"job '{job.id}' is {job.status}, but its output could"
                                   " not be written (see the job's error)")
            raise RequestError(409, "OutputNotReady", f"job '{job.id}' is {job.status}; its output is written"
                               " when it finishes")
        settings = job_settings(job)
        if settings is None:
            raise RequestError(404, "OutputNotFound", f"job '{job.id}' has no output: its record is damaged")
        if settings["output_action"] == "summary_only":
            view = await asyncio.to_thread(self._service.view, job, self._base(request))
            return web.json_response({"output_action": "summary_only", "status": job.status,
                                      "items": view["items"], "mini_batches": view["mini_batches"]})
        path = self._service.output_file(job)
        if not path.is_file():
            raise RequestError(404, "OutputNotFound", f"the output of job '{job.id}' is gone")
        return web.FileResponse(path, headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{settings["output_file_name"]}"'})
