"""ScoringPipeline.handle(): the whole path of one scoring request, top to bottom.

    router.handlers (accept, request id, JSON errors)
      → look up the endpoint in the current RoutingTable snapshot
      → router.auth        authenticate
      → router.traffic     pick deployment (split, pin, mirror decision)
      → read a small body into memory (bounded, with a deadline → 408)
      → router.mirroring   fire-and-forget copy to a shadow deployment
      → router.balancing   pick replica
      → router.upstream    forward, stream the answer back
    router.recording (metrics) runs in the handler once the answer is decided.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from aiohttp import web

from .auth import KeyAuthenticator
from .balancing import InFlightCounter, ReplicaPicker
from .context import RequestContext
from .errors import BadRequest, EndpointNotFound, NoReadyReplica, PayloadTooLarge, RequestTimeout
from .mirroring import Mirror
from .routing_table import RoutingTableHolder
from .traffic import PIN_HEADER, DeploymentPicker
from .upstream.forward import Forwarder
from .upstream.headers import upstream_request_headers

# Azure ML naming rule for endpoints and deployments.
NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")


@dataclass(frozen=True, slots=True)
class BodySettings:
    max_body_bytes: int = 100 * 1024 * 1024
    # Bodies up to this size are read into memory first: they can then be mirrored,
    # and sent upstream in one write. Larger ones are streamed.
    buffer_max_bytes: int = 1024 * 1024
    body_timeout_s: float = 60.0


class ScoringPipeline:
    def __init__(
        self,
        holder: RoutingTableHolder,
        authenticator: KeyAuthenticator,
        deployment_picker: DeploymentPicker,
        replica_picker: ReplicaPicker,
        in_flight: InFlightCounter,
        mirror: Mirror,
        forwarder: Forwarder,
        body: BodySettings,
    ) -> None:
        self._holder = holder
        self._auth = authenticator
        self._deployments = deployment_picker
        self._replicas = replica_picker
        self._in_flight = in_flight
        self._mirror = mirror
        self._forwarder = forwarder
        self._body = body

    async def handle(self, request: web.Request, ctx: RequestContext, endpoint_name: str,
                     upstream_path: str | None) -> web.StreamResponse:
        """Answer one request; `upstream_path` None means the replica's scoring path."""
        if not NAME_RULE.match(endpoint_name):
            raise EndpointNotFound("endpoint names are 2-32 letters, digits and '-', starting with a letter")
        table = self._holder.current
        endpoint = table.endpoints.get(endpoint_name)
        if endpoint is None:
            raise EndpointNotFound(f"no endpoint named '{endpoint_name}'")
        ctx.endpoint = endpoint.name
        self._auth.check(endpoint, request.headers.get("Authorization"))

        deployment, pinned = self._deployments.pick(endpoint, request.headers.get(PIN_HEADER))
        ctx.deployment = deployment.name
        body = await self._read_small_body(request)
        if body is not None and not pinned:
            for shadow in self._deployments.mirror_targets(endpoint, deployment.name):
                headers = upstream_request_headers(
                    request.headers, request_id=ctx.request_id, client_ip=request.remote,
                    scheme=request.scheme)
                self._mirror.send_copy(ctx, shadow, request.method, upstream_path, dict(headers), body)

        if not deployment.replicas:
            raise NoReadyReplica(f"deployment '{deployment.name}' has no ready replica")
        replica = self._replicas.choose(deployment.replicas, self._in_flight)
        ctx.replica = replica.replica_id
        self._in_flight.acquire(replica.replica_id)
        try:
            return await self._forwarder.forward(request, ctx, deployment, replica, upstream_path, body)
        finally:
            self._in_flight.release(replica.replica_id)

    async def _read_small_body(self, request: web.Request) -> bytes | None:
        """Read the body into memory when it is known to be small; None means stream it."""
        if not request.can_read_body:
            return b""
        length = request.content_length
        if length is None:
            if request.headers.get("Transfer-Encoding", "").lower() != "chunked":
                raise BadRequest("a request body needs Content-Length or chunked encoding")
            return None
        if length > self._body.max_body_bytes:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._body.max_body_bytes}")
        if length > self._body.buffer_max_bytes:
            return None
        try:
            async with asyncio.timeout(self._body.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self._body.body_timeout_s:g} s") from None
