"""Routes of the scoring port → ScoringPipeline; every refusal → a JSON body.

The first and last thing a request meets after router.http1 parsed it: it gets its
request id and RequestContext here, and whatever happens in router.pipeline, it leaves
here with either the model's answer (written by router.upstream.forward) or
`{"code", "message", "request_id"}` and the matching status, and is recorded once by
router.recording.

    /api/v1/endpoint/{endpoint}/score         POST → the replica's scoring path
    /api/v1/endpoint/{endpoint}/swagger.json  GET, HEAD → the replica's /swagger.json
    /api/v1/endpoint/{endpoint}/{tail}        any method → /{tail} (raw, checked)
    with a `domain`: https://{endpoint}.{domain}/score and /{tail} likewise
    anything else                             404 NotFound
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine

import orjson
from aiohttp import web

from .accesslog import AccessLog
from .context import RequestContext, request_id_from
from .errors import ScoringError
from .http1_request import Request
from .listener import routing_path
from .paths import NAME_RULE, check_subpath
from .pipeline import ScoringPipeline
from .recording import Recorder
from .tracing import child_traceparent, end_server_span, start_server_span

log = logging.getLogger("scoregate.router")

ENDPOINT_PREFIX = "/api/v1/endpoint/"
_SUBPATH_SPLITS = ENDPOINT_PREFIX.count("/") + 1  # "", api, v1, endpoint, NAME, then the sub-path
NOT_FOUND_MESSAGE = "no such route; scoring is POST /api/v1/endpoint/{endpoint}/score"


def error_response(status: int, code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The JSON refusal as an aiohttp response (for the routes aiohttp serves)."""
    body = orjson.dumps({"code": code, "message": message, "request_id": request_id})
    response = web.Response(status=status, body=body, content_type="application/json")
    response.headers["x-request-id"] = request_id
    if headers:
        response.headers.update(headers)
    return response


def send_error(request: Request, status: int, code: str, message: str, request_id: str,
               headers: dict[str, str] | None = None) -> int:
    """The JSON refusal `{code, message, request_id}`, answered on the scoring port; the
    body's size (the access log's bytes_out)."""
    body = orjson.dumps({"code": code, "message": message, "request_id": request_id})
    lines = f"Content-Type: application/json\r\nx-request-id: {request_id}\r\n"
    if headers:
        lines += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request.respond(status, lines.encode("utf-8", "surrogateescape"), body)
    return len(body)


async def aiohttp_not_found(request: web.Request) -> web.Response:
    return error_response(404, "NotFound", NOT_FOUND_MESSAGE, request_id_from(request.headers.get("x-request-id")))


CLIENT_CLOSED = 499  # logged (never sent) for a request whose caller left before the answer


class ScoringHandlers:
    """Path routes `/api/v1/endpoint/{endpoint}/...`, and with a `domain` host routes:
    `https://{endpoint}.{domain}/score` (and any other path) reach the same endpoint."""

    def __init__(self, pipeline: ScoringPipeline, recorder: Recorder, access_log: AccessLog,
                 domain: str | None = None, tracer=None, trusted_proxies: tuple = ()) -> None:
        self._pipeline = pipeline
        self._recorder = recorder
        self._access_log = access_log
        self._tracer = tracer  # OpenTelemetry tracer, or None: tracing costs nothing
        self._trusted_proxies = tuple(ipaddress.ip_network(n) for n in trusted_proxies)
        self._trusted_cache: dict[str, bool] = {}
        self._host_suffix = f".{domain.lower().strip('.')}" if domain else None

    def handle(self, request: Request) -> Coroutine[None, None, None] | None:
        """Route one request: None when it was answered at once (refused), else the
        coroutine that answers it, which router.http1 awaits in the request's task (one
        coroutine level less on every resumption than an `async def` wrapper)."""
        path = routing_path(request.path)
        if path.startswith(ENDPOINT_PREFIX):
            endpoint, slash, tail = path[len(ENDPOINT_PREFIX):].partition("/")
            if endpoint and slash:
                if tail == "score":
                    if not NAME_RULE.match(endpoint):
                        return self._refuse(request, 404, "EndpointNotFound", "no such endpoint")
                    if request.method != "POST":
                        return self._refuse(request, 405, "MethodNotAllowed", "scoring takes POST",
                                            {"Allow": "POST"})
                    return self._run(request, None, endpoint)
                if tail == "swagger.json" and request.method in ("GET", "HEAD"):
                    return self._run(request, "/swagger.json", endpoint)
                # Forward the raw (still percent-encoded) remainder of the path unchanged: what
                # follows the endpoint's segment. The segments are counted, not the characters,
                # since the caller may have encoded letters before it (an encoded '/' is never
                # decoded by routing_path, so both paths have the same segments).
                rest = request.path.split("/", _SUBPATH_SPLITS)
                return self._run(request, "/" + rest[-1] if len(rest) > _SUBPATH_SPLITS else "/", endpoint,
                                 check_path=True)
        endpoint = self._endpoint_from_host(request.header(b"host"))
        if endpoint is not None:
            if request.path == "/score":
                if request.method != "POST":
                    return self._refuse(request, 405, "MethodNotAllowed", "scoring takes POST", {"Allow": "POST"})
                return self._run(request, None, endpoint)
            return self._run(request, request.path, endpoint, check_path=True)
        return self._refuse(request, 404, "NotFound", NOT_FOUND_MESSAGE)

    def _is_trusted(self, remote: str | None) -> bool:
        if not remote:
            return False
        trusted = self._trusted_cache.get(remote)
        if trusted is None:
            try:
                address = ipaddress.ip_address(remote)
                trusted = any(address in network for network in self._trusted_proxies)
            except ValueError:
                trusted = False
            if len(self._trusted_cache) > 10000:
                self._trusted_cache.clear()
            self._trusted_cache[remote] = trusted
        return trusted

    def _endpoint_from_host(self, host: str | None) -> str | None:
        if self._host_suffix is None or not host:
            return None
        name = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host.lower()
        if name.endswith(self._host_suffix):
            label = name[: -len(self._host_suffix)]
            if label and "." not in label:
                return self._pipeline.endpoint_of_host_label(label)
        return None

    def _refuse(self, request: Request, status, code, message, headers=None) -> None:
        """Answered before any endpoint is looked up (a wrong method or path): counted and
        logged as every other answer (endpoint and deployment "-")."""
        ctx = RequestContext(request_id_from(request.index.get(b"x-request-id")), request.remote,
                             request.method, request.path)
        ctx.status, ctx.error_code = status, code
        ctx.bytes_out = send_error(request, status, code, message, ctx.request_id, headers)
        self._answered(ctx)

    def record_refusal(self, refusal, request_id: str, remote: str | None, bytes_out: int) -> None:
        """An answer router.http1 made before any handler saw the request (400 for what
        llhttp refuses, 408, 414, 431...): counted and logged with method and path "-",
        its request id the one the caller got."""
        ctx = RequestContext(request_id, remote, "-", "-")
        ctx.status, ctx.error_code, ctx.bytes_out = refusal.status, refusal.code, bytes_out
        self._answered(ctx)

    def _answered(self, ctx: RequestContext) -> None:
        """An answer made without the pipeline: counted and logged as every other."""
        ctx.finish()
        self._recorder.record(ctx)
        self._access_log.record(ctx)

    async def _run(self, request: Request, upstream_path: str | None, endpoint: str,
                   check_path: bool = False) -> None:
        ctx = RequestContext(request_id_from(request.index.get(b"x-request-id")), request.remote,
                             request.method, request.path)
        request.request_id = ctx.request_id  # for a refusal the connection may answer instead
        if self._trusted_proxies:
            ctx.trust_forwarded = self._is_trusted(request.remote)
        span = None
        if self._tracer is not None:
            span, ctx.traceparent = start_server_span(self._tracer, request.method, request.header_dict())
        else:
            ctx.traceparent, _ = child_traceparent(request.index.get(b"traceparent"))
        try:
            if check_path:
                check_subpath(upstream_path or "/")
            # The forwarder answers the caller and sets ctx.status.
            await self._pipeline.handle(request, ctx, endpoint, upstream_path)
        except ScoringError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            headers = dict(exc.headers)
            if exc.retry_after_s is not None:
                headers.setdefault("Retry-After", str(exc.retry_after_s))
            if ctx.deployment:
                headers.setdefault("azureml-model-deployment", ctx.deployment)
            headers["Server-Timing"] = ctx.server_timing()
            headers["traceparent"] = ctx.traceparent
            ctx.bytes_out = send_error(request, exc.status, exc.code, exc.message, ctx.request_id, headers)
        except asyncio.CancelledError:
            if not ctx.status:
                refusal = request.refusal
                if refusal is not None:  # its body was malformed: the connection answered the refusal
                    ctx.status, ctx.error_code = refusal.status, refusal.code
                else:  # the caller went away before its answer (nginx's 499)
                    ctx.status, ctx.error_code = CLIENT_CLOSED, "ClientClosedRequest"
            raise
        except Exception:
            log.exception("request %s failed inside the gateway", ctx.request_id)
            ctx.status, ctx.error_code = 500, "InternalError"
            if not request.responded:
                ctx.bytes_out = send_error(request, 500, "InternalError", "the gateway failed to handle the request",
                                           ctx.request_id)
            else:
                request.abort()
        finally:
            ctx.finish()
            self._recorder.record(ctx)
            self._access_log.record(ctx)
            if span is not None:
                end_server_span(self._tracer, span, ctx)
