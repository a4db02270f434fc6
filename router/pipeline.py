"""ScoringPipeline.handle(): the whole path of one scoring request, top to bottom.

    router.handlers (accept, request id, JSON errors)
      → look up the endpoint in the current RoutingTable snapshot
      → router.auth        authenticate
      → router.ratelimit   optional per-endpoint token bucket
      → router.traffic     pick deployment (split, pin, mirror decision)
      → read a small body into memory (bounded, with a deadline → 408)
      → router.mirroring   fire-and-forget copy to a shadow deployment
      → router.admission   a replica slot now, or a bounded wait in the FIFO queue
      → router.upstream    forward and stream the answer back; if the connection could
                           not even be opened, retry on another replica (same deadline)
    router.recording (metrics) runs in the handler once the answer is decided.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .admission import Admission
from .auth import KeyAuthenticator
from .balancing.ejection import OutlierEjector
from .context import RequestContext
from .errors import EndpointNotFound, NoReadyReplica, PayloadTooLarge, RequestTimeout, UpstreamConnectionError
from .auth_throttle import AuthThrottle
from .errors import BadRequest, DeploymentNotFound, Unauthorized
from .http1_request import Request
from .mirroring import Mirror
from .paths import NAME_RULE
from .ratelimit import RateLimiter
from .recording import Recorder
from .routing_table import RoutingTableHolder
from .traffic import PIN_HEADER, DeploymentPicker
from .upstream.forward import Forwarder, NotSent, UpstreamDeadline, UpstreamFailed
from .upstream.headers import upstream_request_headers

_PIN_KEY = PIN_HEADER.encode()


@dataclass(frozen=True, slots=True)
class BodySettings:
    max_body_bytes: int = 100 * 1024 * 1024
    # Bodies up to this size are read into memory first: they can then be mirrored,
    # and sent upstream in one write. Larger ones are streamed.
    buffer_max_bytes: int = 1024 * 1024
    body_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class RetrySettings:
    # Retries only when no byte reached a model (the connection could not be opened).
    max_retries: int = 2


class ScoringPipeline:
    def __init__(
        self,
        holder: RoutingTableHolder,
        authenticator: KeyAuthenticator,
        rate_limiter: RateLimiter,
        deployment_picker: DeploymentPicker,
        admission: Admission,
        ejector: OutlierEjector,
        auth_throttle: AuthThrottle,
        mirror: Mirror,
        forwarder: Forwarder,
        recorder: Recorder,
        body: BodySettings,
        retry: RetrySettings,
    ) -> None:
        self._holder = holder
        self._auth = authenticator
        self._rate_limiter = rate_limiter
        self._deployments = deployment_picker
        self._admission = admission
        self._ejector = ejector
        self._auth_throttle = auth_throttle
        self._mirror = mirror
        self._forwarder = forwarder
        self._recorder = recorder
        self._body = body
        self._retry = retry

    def endpoint_of_host_label(self, label: str) -> str:
        """The endpoint a host route's first label (lowercase, as the handler has it) names."""
        return self._holder.current.host_names.get(label, label)

    async def handle(self, request: Request, ctx: RequestContext, endpoint_name: str,
                     upstream_path: str | None) -> None:
        """Answer one request; `upstream_path` None means the replica's scoring path.
        The answer is written by the forwarder; a refusal is raised as a ScoringError."""
        endpoint = self._holder.current.endpoints.get(endpoint_name)
        if endpoint is None:  # every known name passed NAME_RULE: only an unknown one is checked
            if not NAME_RULE.match(endpoint_name):
                raise EndpointNotFound("endpoint names are 2-32 letters, digits and '-', starting with a letter")
            raise EndpointNotFound(f"no endpoint named '{endpoint_name}'")
        ctx.endpoint = endpoint.name
        self._auth_throttle.check(request.remote)
        try:
            self._auth.check(endpoint, request.index.get(b"authorization"))
        except Unauthorized:
            self._auth_throttle.failed(request.remote)
            raise
        self._rate_limiter.check(endpoint.name, endpoint.rate_limit)

        pin = request.index.get(_PIN_KEY)
        if pin is not None:
            if sum(1 for name, _ in request.raw_headers if name.lower() == _PIN_KEY) > 1:
                raise BadRequest(f"more than one '{PIN_HEADER}' header: a request pins at most one deployment")
            pin = pin.decode("latin-1")  # a name is ASCII: anything else fails the rule
            if not NAME_RULE.match(pin):
                raise DeploymentNotFound(f"'{PIN_HEADER}' must name a deployment (2-32 letters, digits or '-')")
        deployment, pinned = self._deployments.pick(endpoint, pin)
        ctx.deployment = deployment.name
        loop = request.conn.loop
        deadline = loop.time() + deployment.request_settings.request_timeout_ms / 1000

        body = await self._read_small_body(request)
        if body:
            ctx.bytes_in = len(body)
        if body is not None and not pinned:
            headers = None
            for shadow in self._deployments.mirror_targets(endpoint, deployment.name):
                if headers is None:  # built once, only when there is a copy to send
                    headers = upstream_request_headers(
                        request.raw_headers, request_id=ctx.request_id, client_ip=request.remote,
                        scheme=request.scheme, traceparent=ctx.traceparent, trust_forwarded=ctx.trust_forwarded)
                self._mirror.send_copy(ctx, shadow, request.method, upstream_path, headers, body)

        key = (endpoint.name, deployment.name)
        tried: list[str] = []
        while True:
            # Re-read the snapshot: replicas may have come or gone while the body arrived.
            current = self._holder.current.endpoints.get(endpoint.name)
            deployment = current.deployments.get(deployment.name) if current else None
            if deployment is None:
                raise NoReadyReplica(f"deployment '{key[1]}' is being removed")
            replica = self._admission.try_acquire(key, deployment, exclude=tried)
            if replica is None:  # no free slot now (or no replica): queue, or be refused
                queued_ns = time.perf_counter_ns()
                try:
                    replica = await self._admission.acquire(key, deployment, exclude=tried)
                finally:  # a wait that ends in a 429 was queue time too, not the gateway's
                    ctx.queued_ns += time.perf_counter_ns() - queued_ns
            ctx.replica = replica.replica_id
            try:
                await self._forwarder.forward(request, ctx, deployment, replica, upstream_path, body, deadline)
                self._ejector.on_success(replica.replica_id)
                return
            except NotSent as exc:
                self._on_failure(key, replica.replica_id, exc.kind)
                tried.append(replica.replica_id)
                if (body is None and ctx.bytes_in) or len(tried) > self._retry.max_retries \
                        or loop.time() >= deadline \
                        or not self._admission.candidates(deployment, exclude=tried):
                    raise UpstreamConnectionError(
                        f"could not connect to a replica of deployment '{key[1]}' "
                        f"({len(tried)} attempt(s))") from None
                self._recorder.retries.labels(*key).inc()
            except (UpstreamFailed, UpstreamDeadline) as exc:
                self._on_failure(key, replica.replica_id, exc.kind)
                raise
            finally:
                self._admission.release(key, replica.replica_id)

    def _on_failure(self, key: tuple[str, str], replica_id: str, kind: str) -> None:
        if self._ejector.on_failure(replica_id, kind):
            self._recorder.ejections.labels(*key).inc()

    async def _read_small_body(self, request: Request) -> bytes | None:
        """Read the body into memory when it is known to be small; None means stream it."""
        if not request.has_body:
            return b""
        length = request.content_length
        if length is None:  # chunked (router.http1 accepts no other transfer coding)
            return None
        if length > self._body.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._body.max_body_bytes}")
        if length > self._body.buffer_max_bytes:
            return None
        body = request.body
        if body.done:
            # Already all here (the usual small body): take it without a timer.
            return body.take()
        try:
            async with asyncio.timeout(self._body.body_timeout_s):
                return await body.read()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self._body.body_timeout_s:g} s") from None
