"""HTTP routes of the scoring port → ScoringPipeline; every refusal → a JSON body.

The first and last thing a request meets: it gets its request id and RequestContext
here, and whatever happens in router.pipeline, it leaves here with either the model's
answer or `{"code", "message", "request_id"}` and the matching status, and is recorded
once by router.recording.
"""

from __future__ import annotations

import ipaddress
import logging

import orjson
from aiohttp import web

from .accesslog import AccessLog
from .context import RequestContext, request_id_from
from .errors import BadRequest, ScoringError
from .paths import NAME_RULE, check_subpath
from .pipeline import ScoringPipeline
from .recording import Recorder
from .tracing import child_traceparent, end_server_span, start_server_span

log = logging.getLogger("scoregate.router")

ENDPOINT_PREFIX = "/api/v1/endpoint/"


def error_response(status: int, code: str, message: str, request_id: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"code": code, "message": message, "request_id": request_id})
    response = web.Response(status=status, body=body, content_type="application/json")
    response.headers["x-request-id"] = request_id
    if headers:
        response.headers.update(headers)
    return response


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

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/api/v1/endpoint/{endpoint}/score", self.score),
            web.get("/api/v1/endpoint/{endpoint}/swagger.json", self.swagger),
            web.route("*", "/api/v1/endpoint/{endpoint}/{tail:.*}", self.passthrough),
            web.route("*", "/{tail:.*}", self.not_found),
        ]

    async def score(self, request: web.Request) -> web.StreamResponse:
        if not NAME_RULE.match(request.match_info["endpoint"]):
            return self._refuse(request, 404, "EndpointNotFound", "no such endpoint")
        if request.method != "POST":
            return self._refuse(request, 405, "MethodNotAllowed", "scoring takes POST",
                                {"Allow": "POST"})
        return await self._run(request, None)

    async def swagger(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, "/swagger.json")

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        # Forward the raw (still percent-encoded) remainder of the path unchanged.
        raw = request.rel_url.raw_path
        prefix_end = raw.find("/", len(ENDPOINT_PREFIX))
        return await self._run(request, raw[prefix_end:] if prefix_end > 0 else "/", check_path=True)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        endpoint = self._endpoint_from_host(request.host)
        if endpoint is not None:
            path = request.rel_url.raw_path
            if path == "/score":
                if request.method != "POST":
                    return self._refuse(request, 405, "MethodNotAllowed", "scoring takes POST", {"Allow": "POST"})
                return await self._run(request, None, endpoint)
            return await self._run(request, path, endpoint, check_path=True)
        return self._refuse(request, 404, "NotFound",
                            "no such route; scoring is POST /api/v1/endpoint/{endpoint}/score")

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
                return label
        return None

    def _refuse(self, request, status, code, message, headers=None) -> web.Response:
        request_id = request_id_from(request.headers.get("x-request-id"))
        return error_response(status, code, message, request_id, headers)

    async def _run(self, request: web.Request, upstream_path: str | None,
                   endpoint: str | None = None, check_path: bool = False) -> web.StreamResponse:
        ctx = RequestContext(request_id_from(request.headers.get("x-request-id")), request.remote)
        if self._trusted_proxies:
            ctx.trust_forwarded = self._is_trusted(request.remote)
        span = None
        if self._tracer is not None:
            span, ctx.traceparent = start_server_span(self._tracer, request)
        else:
            ctx.traceparent, _ = child_traceparent(request.headers.get("traceparent"))
        try:
            if check_path:
                check_subpath(upstream_path or "/")
            if request.version < (1, 1) and "Transfer-Encoding" in request.headers:
                # RFC 9112 §6.1: a 1.0 message with Transfer-Encoding has faulty framing.
                raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0 requests")
            response = await self._pipeline.handle(
                request, ctx, endpoint or request.match_info["endpoint"], upstream_path)
            ctx.status = response.status
            if request.protocol is not None and request.protocol.should_close_after():
                response.force_close()
            return response
        except ScoringError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            headers = dict(exc.headers)
            if exc.retry_after_s is not None:
                headers.setdefault("Retry-After", str(exc.retry_after_s))
            if ctx.deployment:
                headers.setdefault("azureml-model-deployment", ctx.deployment)
            headers["Server-Timing"] = ctx.server_timing()
            headers["traceparent"] = ctx.traceparent
            return error_response(exc.status, exc.code, exc.message, ctx.request_id, headers)
        except Exception:
            log.exception("request %s failed inside the gateway", ctx.request_id)
            ctx.status, ctx.error_code = 500, "InternalError"
            return error_response(500, "InternalError", "the gateway failed to handle the request",
                                  ctx.request_id)
        finally:
            self._recorder.record(ctx)
            self._access_log.record(ctx, request.method, request.rel_url.raw_path)
            if span is not None:
                end_server_span(self._tracer, span, ctx)
