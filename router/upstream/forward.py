"""Forward: send the request to the chosen replica and stream its answer back.

Follows router.admission in router.pipeline. Small bodies (already read by the
pipeline) are sent from memory; large or chunked ones are streamed with a byte limit.
Small responses are returned whole, larger ones streamed chunk by chunk. A non-2xx
answer of the model becomes 424 with the model's status and reason in
`ms-azureml-model-error-statuscode` / `-reason` and its body kept.

Failures map to the contract: a connection that could not be opened raises NotSent
(nothing reached the model, so the pipeline may retry elsewhere); a connection that
broke before the answer → 502; no answer before the deadline → 504 (or 408 if the
caller was still sending its body). A failure after the answer started streaming
cannot change the status any more: the caller's connection is aborted so it sees a
truncated response rather than a silently short one.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from yarl import URL

from ..context import RequestContext
from ..errors import (PayloadTooLarge, RequestTimeout, ScoringError, UpstreamConnectionError,
                      UpstreamTimeout)
from ..routing_table import DeploymentRoute, Replica
from .headers import downstream_response_headers, upstream_request_headers
from .pool import UpstreamPool

DEPLOYMENT_HEADER = "azureml-model-deployment"
WHOLE_RESPONSE_MAX_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024


class NotSent(Exception):
    """The connection to the replica could not be opened: no byte reached the model."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class UpstreamFailed(UpstreamConnectionError):
    """502 after the request may have reached the model; `kind` feeds ejection."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamDeadline(UpstreamTimeout):
    kind = "timeout"


class _BodyTooLarge(Exception):
    pass


class _Upload:
    """Streams the caller's body upstream, counting bytes and noting when it is done."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    async def stream(self, source: aiohttp.StreamReader, limit: int, ctx: RequestContext):
        async for chunk in source.iter_chunked(STREAM_CHUNK_BYTES):
            ctx.bytes_in += len(chunk)
            if ctx.bytes_in > limit:
                ctx.error_code = PayloadTooLarge.code  # the client library may wrap what we raise
                raise _BodyTooLarge()
            yield chunk
        self.done = True


class Forwarder:
    __slots__ = ("_pool", "_max_body_bytes", "_max_response_bytes")

    def __init__(self, pool: UpstreamPool, *, max_body_bytes: int, max_response_bytes: int = 1 << 30) -> None:
        self._pool = pool
        self._max_body_bytes = max_body_bytes
        self._max_response_bytes = max_response_bytes

    async def forward(
        self,
        request: web.Request,
        ctx: RequestContext,
        deployment: DeploymentRoute,
        replica: Replica,
        path: str | None,
        body: bytes | None,
        deadline: float,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(
            request.headers, request_id=ctx.request_id, client_ip=request.remote, scheme=request.scheme,
            traceparent=ctx.traceparent, trust_forwarded=ctx.trust_forwarded)
        upload = None
        if body is not None:
            data = body or None
        elif request.can_read_body:
            upload = _Upload()
            data = upload.stream(request.content, self._max_body_bytes, ctx)
            if request.content_length is not None:
                headers["Content-Length"] = str(request.content_length)
        else:
            data = None
        # Path and query go out byte for byte as the caller sent them (encoded=True).
        raw = f"{replica.base_url}{path or replica.scoring_path}"
        query = request.rel_url.raw_query_string
        url = URL(f"{raw}?{query}" if query else raw, encoded=True)
        ctx.upstream_started_ns = time.perf_counter_ns()
        streaming: list[web.StreamResponse] = []  # set once the answer started
        try:
            async with asyncio.timeout_at(deadline):
                async with self._pool.session.request(
                    request.method, url, headers=headers, data=data, allow_redirects=False
                ) as upstream:
                    return await self._relay(request, ctx, deployment, upstream, streaming)
        except _BodyTooLarge:
            raise PayloadTooLarge(f"request body exceeds {self._max_body_bytes} bytes") from None
        except TimeoutError:
            if streaming:
                self._abort(request)
                return streaming[0]
            if upload is not None and not upload.done:
                raise RequestTimeout("the request body did not arrive in time") from None
            raise UpstreamDeadline(
                f"the model did not answer within {deployment.request_settings.request_timeout_ms} ms"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise NotSent(type(exc).__name__) from None
        except ScoringError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            if streaming:
                self._abort(request)
                return streaming[0]
            if ctx.error_code == PayloadTooLarge.code:
                raise PayloadTooLarge(f"request body exceeds {self._max_body_bytes} bytes") from None
            kind = "reset" if isinstance(exc, (aiohttp.ServerDisconnectedError, ConnectionError)) else "error"
            raise UpstreamFailed(
                f"the connection to the model failed: {type(exc).__name__}", kind) from None
        finally:
            ctx.upstream_ended_ns = time.perf_counter_ns()

    async def _relay(
        self,
        request: web.Request,
        ctx: RequestContext,
        deployment: DeploymentRoute,
        upstream: aiohttp.ClientResponse,
        streaming: list[web.StreamResponse],
    ) -> web.StreamResponse:
        headers = downstream_response_headers(upstream.headers)
        headers[DEPLOYMENT_HEADER] = deployment.name
        headers["x-request-id"] = ctx.request_id
        headers["Server-Timing"] = ctx.server_timing()
        if ctx.traceparent:
            headers["traceparent"] = ctx.traceparent
        status = upstream.status
        if not 200 <= status < 300:
            headers["ms-azureml-model-error-statuscode"] = str(status)
            headers["ms-azureml-model-error-reason"] = (upstream.reason or "")[:200]
            ctx.error_code = "ModelError"
            status = 424
        length = upstream.content_length
        if length is not None and length > self._max_response_bytes:
            raise UpstreamFailed(f"the model's answer ({length} bytes) exceeds the limit of "
                                 f"{self._max_response_bytes} bytes", "oversized")
        if length is not None and length <= WHOLE_RESPONSE_MAX_BYTES:
            payload = await upstream.read()
            ctx.bytes_out = len(payload)
            return web.Response(status=status, headers=headers, body=payload)
        response = web.StreamResponse(status=status, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        streaming.append(response)
        async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
            ctx.bytes_out += len(chunk)
            if ctx.bytes_out > self._max_response_bytes:
                raise aiohttp.ClientPayloadError("the model's answer exceeds the response size limit")
            await response.write(chunk)
        await response.write_eof()
        return response

    @staticmethod
    def _abort(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()
