"""Forward: send the request to the chosen replica and stream its answer back.

Follows router.admission in router.pipeline. Small bodies (already read by the
pipeline) go out with the request head in one write; large or chunked ones are
streamed with a byte limit. Small responses are returned whole, larger ones streamed
chunk by chunk. A non-2xx answer of the model becomes 424 with the model's status and
reason in `ms-azureml-model-error-statuscode` / `-reason` and its body kept.

Failures map to the contract:
- no connection could be opened → NotSent (the pipeline may retry on another replica);
- the replica reset a *fresh* connection before answering a byte → NotSent as well: a
  reset means its server still had unread bytes of the request, so no model ran on it;
- a *reused* keep-alive connection that ends before a byte of the answer, by a reset
  (or, for an idempotent method, by any close) → sent again once on a new connection
  to the same replica: the replica closed an idle connection as the request crossed
  it. A clean close after a non-idempotent request (POST) is ambiguous — the model may
  have run — so it is a 502, never retried;
- any other broken connection or invalid answer → 502; no answer before the deadline →
  504 (or 408 if the caller was still sending its body). A failure after the answer
  started streaming cannot change the status any more: the caller's connection is
  aborted so it sees a truncated response rather than a silently short one.
"""

from __future__ import annotations

import asyncio
import time

from ..context import RequestContext
from ..http1_request import Request
from ..errors import (PayloadTooLarge, RequestTimeout, ScoringError, UpstreamConnectionError,
                      UpstreamTimeout)
from ..routing_table import DeploymentRoute, Replica
from .connection import BadResponse, ConnectionClosed, UpstreamConnection
from .deadlines import Deadlines
from .headers import downstream_header_lines, upstream_request_head
from .pool import ConnectFailed, UpstreamPool

DEPLOYMENT_HEADER = b"azureml-model-deployment"
WHOLE_RESPONSE_MAX_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
# RFC 9110 §9.2.2: a proxy may send these again after a connection failure.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class NotSent(Exception):
    """No byte of the request can have reached a model: safe to try another replica."""

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


class _ResponseTooLarge(Exception):
    pass


class _Upload:
    """Streams the caller's body to the replica, counting bytes and noting when it is done."""

    __slots__ = ("done", "sent")

    def __init__(self) -> None:
        self.done = False
        self.sent = 0

    async def run(self, conn: UpstreamConnection, source, chunked: bool, limit: int,
                  ctx: RequestContext) -> None:
        async for chunk in source.chunks():
            ctx.bytes_in += len(chunk)
            if ctx.bytes_in > limit:
                raise _BodyTooLarge()
            self.sent += len(chunk)
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")
        self.done = True


class Forwarder:
    __slots__ = ("_pool", "_max_body_bytes", "_max_response_bytes", "_on_resend", "_deadlines")

    def __init__(self, pool: UpstreamPool, *, max_body_bytes: int, max_response_bytes: int = 1 << 30,
                 on_resend=None) -> None:
        self._pool = pool
        self._max_body_bytes = max_body_bytes
        self._max_response_bytes = max_response_bytes
        # (endpoint, deployment) → None, for each request sent again after the replica
        # closed a reused connection under it.
        self._on_resend = on_resend or (lambda endpoint, deployment: None)
        self._deadlines = Deadlines()

    def close(self) -> None:
        self._deadlines.close()

    async def forward(
        self,
        request: Request,
        ctx: RequestContext,
        deployment: DeploymentRoute,
        replica: Replica,
        path: str | None,
        body: bytes | None,
        deadline: float,
    ) -> None:
        """Send the request to `replica` and answer the caller (setting ctx.status)."""
        method = request.method
        source = None
        chunked = False
        if body is not None:
            framing = f"Content-Length: {len(body)}\r\n" if body or method in BODY_METHODS else ""
        elif request.has_body:
            source = request.body
            if request.content_length is not None:
                framing = f"Content-Length: {request.content_length}\r\n"
            else:
                framing, chunked = "Transfer-Encoding: chunked\r\n", True
        else:
            framing = "Content-Length: 0\r\n" if method in BODY_METHODS else ""
        # Path and query go out byte for byte as the caller sent them.
        target = path or replica.scoring_path
        query = request.query
        if query:
            target = f"{target}?{query}"
        head = upstream_request_head(
            method, target, replica.authority, request.raw_headers, framing, request_id=ctx.request_id,
            client_ip=request.remote, scheme=request.scheme, traceparent=ctx.traceparent,
            trust_forwarded=ctx.trust_forwarded, forward_lines=request.forward_lines)

        ctx.upstream_started_ns = time.perf_counter_ns()
        conn: UpstreamConnection | None = None
        upload: _Upload | None = None
        upload_task: asyncio.Task | None = None
        done = False
        try:
            with self._deadlines.at(deadline):
                while True:
                    fresh = conn is not None  # the second attempt never reuses a connection
                    # An idle connection needs no await (the usual case); else connect.
                    if fresh or (conn := self._pool.take_idle(replica)) is None:
                        try:
                            conn = await self._pool.connect(replica, fresh=fresh)
                        except ConnectFailed as exc:
                            raise NotSent(exc.kind) from None
                    try:
                        conn.send(head, body, head_only=method == "HEAD")
                        if source is not None:
                            upload = _Upload()
                            upload_task = asyncio.get_running_loop().create_task(
                                upload.run(conn, source, chunked, self._max_body_bytes, ctx))
                            upload_task.add_done_callback(_abort_on_failure(conn))
                        status, reason, raw_headers, length = await conn.head()
                        break
                    except ConnectionClosed as exc:
                        if upload_task is not None and upload_task.done() and upload_task.exception():
                            raise upload_task.exception() from None
                        if exc.received or (upload is not None and upload.sent):
                            raise
                        if conn.uses > 1 and not fresh and (exc.reset or method in IDEMPOTENT_METHODS):
                            # The replica closed an idle connection as the request crossed it.
                            self._pool.discard_idle(replica)
                            self._on_resend(ctx.endpoint, deployment.name)
                            if upload_task is not None:
                                upload_task.cancel()  # still waiting for the caller's first bytes
                            upload = upload_task = None
                            continue
                        if exc.reset:
                            raise NotSent("reset") from None
                        raise
                await self._relay(request, ctx, deployment, conn, status, reason, raw_headers, length)
                done = upload_task is None or upload_task.done()
                return
        except _BodyTooLarge:
            ctx.error_code = PayloadTooLarge.code
            raise PayloadTooLarge(f"request body exceeds {self._max_body_bytes} bytes") from None
        except TimeoutError:
            if request.responded:  # the answer started: cut it
                request.abort()
                return
            if upload is not None and not upload.done:
                raise RequestTimeout("the request body did not arrive in time") from None
            raise UpstreamDeadline(
                f"the model did not answer within {deployment.request_settings.request_timeout_ms} ms"
            ) from None
        except (NotSent, ScoringError):
            raise
        except BadResponse as exc:
            if request.responded:
                request.abort()
                return
            raise UpstreamFailed(f"the model's answer is not valid HTTP: {exc}", "bad_response") from None
        except (ConnectionClosed, OSError, _ResponseTooLarge) as exc:
            if request.responded:
                request.abort()
                return
            raise UpstreamFailed(f"the connection to the model failed: {exc}", "reset") from None
        finally:
            ctx.upstream_ended_ns = time.perf_counter_ns()
            if upload_task is not None and not upload_task.done():
                upload_task.cancel()
            if conn is not None:
                if done:
                    self._pool.release(conn)
                else:
                    conn.abort()

    async def _relay(
        self,
        request: Request,
        ctx: RequestContext,
        deployment: DeploymentRoute,
        conn: UpstreamConnection,
        status: int,
        reason: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        length: int | None,
    ) -> None:
        lines = conn.downstream_lines
        if lines is None:
            lines = downstream_header_lines(raw_headers)
        lines.append(b"%s: %s\r\nx-request-id: %s\r\nServer-Timing: %s\r\n" % (
            DEPLOYMENT_HEADER, deployment.name.encode(), ctx.request_id.encode(), ctx.server_timing().encode()))
        if ctx.traceparent:
            lines.append(b"traceparent: %s\r\n" % ctx.traceparent.encode())
        if not 200 <= status < 300:
            lines.append(b"ms-azureml-model-error-statuscode: %d\r\nms-azureml-model-error-reason: %s\r\n"
                         % (status, reason[:200]))
            ctx.error_code = "ModelError"
            status = 424
        if length is not None and length > self._max_response_bytes:
            raise UpstreamFailed(f"the model's answer ({length} bytes) exceeds the limit of "
                                 f"{self._max_response_bytes} bytes", "oversized")
        ctx.status = status
        if length is not None and length <= WHOLE_RESPONSE_MAX_BYTES:
            payload = await conn.read_all()
            ctx.bytes_out = len(payload)
            request.respond(status, b"".join(lines), payload,
                            content_length=length if request.head_only else None)
            return
        request.start(status, b"".join(lines), length)
        while (chunk := await conn.next_chunk()) is not None:
            ctx.bytes_out += len(chunk)
            if ctx.bytes_out > self._max_response_bytes:
                raise _ResponseTooLarge("the model's answer exceeds the response size limit")
            await request.write(chunk)
        request.end()


def _abort_on_failure(conn: UpstreamConnection):
    """A failed upload ends the exchange: close the connection so the wait for the
    answer stops at once (the forwarder then reports the upload's own error)."""

    def callback(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            conn.abort()

    return callback
