"""The management API on the admin port, used by the CLI (bearer admin token).

    POST   /api/v1/apply                                   documents → stored desired state; a deployment
                                                           whose rollout failed gets a new attempt
    GET    /api/v1/endpoints                               list
    GET    /api/v1/endpoints/{e}                           show
    DELETE /api/v1/endpoints/{e}                           delete, waits for its replicas to stop
    GET    /api/v1/endpoints/{e}/keys                      {primaryKey, secondaryKey}
    POST   /api/v1/endpoints/{e}/token                     {"lifetime_s"?} → aml_token access token
    GET    /api/v1/instance-types                          list
    POST   /api/v1/endpoints/{e}/regenerate-keys           {"key_type": "primary" | "secondary"}
    GET    /api/v1/endpoints/{e}/deployments               list
    GET    /api/v1/endpoints/{e}/deployments/{d}           show
    DELETE /api/v1/endpoints/{e}/deployments/{d}           delete
    POST   /api/v1/endpoints/{e}/deployments/{d}/scale     {"instance_count": N}; 409 when it would leave
                                                           the deployment's traffic no instance
    GET    /api/v1/endpoints/{e}/deployments/{d}/logs      ?lines=N (0 to 10000) → text
Errors are JSON `{"code", "message"}`. Writes go to the Store and then wake the
controller, which does the rest.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import replace

from aiohttp import web

from .backends import Backend
from .controller.loop import Controller
from .controller.rollout import FAILED
from .applying import parse_documents, write
from .batch.admin import deployment_deleted, deployment_shown
from .batch.store import BatchStoreError
from .manifests import Document, ManifestError
from .online_rules import MAX_INSTANCE_COUNT
from .resources import with_instance_type
from .store import Store, StoreError
from .views import deployment_view, endpoint_view

DELETE_WAIT_S = 30.0


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def replica_floor(deployment) -> int:
    """The replicas a deployment is asked to keep: instance_count, or for an autoscaled one
    instance_count held within min_instances..max_instances (as the autoscaler holds an
    explicit count). 0 means none: a request routed to it is refused with 503, and that
    refusal is no load the autoscaler could scale up on."""
    scale = deployment.scale_settings
    if scale.type != "target_utilization":
        return deployment.instance_count
    return max(scale.min_instances, min(max(scale.min_instances, scale.max_instances), deployment.instance_count))


def _traffic_naming(endpoint, name: str) -> str | None:
    """"traffic.d1=100" (or mirror_traffic.…) when the endpoint sends `name` any, else None."""
    if endpoint is None:
        return None
    for field_name, weights in (("traffic", endpoint.traffic), ("mirror_traffic", endpoint.mirror_traffic)):
        if weights.get(name, 0) > 0:
            return f"{field_name}.{name}={weights[name]}"
    return None


def _why_none(deployment) -> str:
    """instance_count 0; autoscaled, only a record stored before min_instances had to be at
    least 1 (serving.online_rules) can have no replica."""
    if deployment.scale_settings.type != "target_utilization":
        return "instance_count 0"
    return f"instance_count {deployment.instance_count} and scale_settings.min_instances 0"


class AdminApi:
    def __init__(self, store: Store, controller: Controller, backend: Backend, *,
                 admin_token: str, scoring_url: str, autoscaling=None, load=None, tokens=None,
                 batch=None) -> None:
        self._store = store
        self._controller = controller
        self._backend = backend
        self._token = admin_token.encode()
        self.scoring_url = scoring_url
        self._autoscaling = autoscaling
        self._tokens = tokens  # serving.tokens.TokenIssuer
        self._batch = batch  # serving.batch.service.BatchService
        self._load = load  # (endpoint, deployment) -> (in flight, queued)
        # Changes to the desired state, one at a time: each one checks what is stored and
        # then writes, and two whose checks each read the other's old state would both pass
        # (a scale to 0 and traffic to that deployment, applied at once).
        self._changing = asyncio.Lock()

    def _view(self, deployment, replicas) -> dict:
        rollout = self._controller.rollouts.rollout((deployment.endpoint_name, deployment.name))
        view = deployment_view(deployment, replicas, rollout)
        key = (deployment.endpoint_name, deployment.name)
        if self._load is not None:
            view["in_flight_requests"], view["queued_requests"] = self._load(*key)
        view["desired_replicas"] = deployment.instance_count
        if self._autoscaling is not None:
            view["desired_replicas"] = self._autoscaling.replicas_for(deployment)
            status = self._autoscaling.status(*key)
            if status is not None:
                view["autoscale"] = status
        return view

    def routes(self) -> list[web.RouteDef]:
        p = "/api/v1"
        return [
            web.post(f"{p}/apply", self.apply),
            web.get(f"{p}/endpoints", self.list_endpoints),
            web.get(f"{p}/endpoints/{{e}}", self.show_endpoint),
            web.delete(f"{p}/endpoints/{{e}}", self.delete_endpoint),
            web.get(f"{p}/endpoints/{{e}}/keys", self.get_keys),
            web.post(f"{p}/endpoints/{{e}}/regenerate-keys", self.regenerate_keys),
            web.post(f"{p}/endpoints/{{e}}/token", self.get_token),
            web.get(f"{p}/instance-types", self.list_instance_types),
            web.get(f"{p}/endpoints/{{e}}/deployments", self.list_deployments),
            web.get(f"{p}/endpoints/{{e}}/deployments/{{d}}", self.show_deployment),
            web.delete(f"{p}/endpoints/{{e}}/deployments/{{d}}", self.delete_deployment),
            web.post(f"{p}/endpoints/{{e}}/deployments/{{d}}/scale", self.scale_deployment),
            web.get(f"{p}/endpoints/{{e}}/deployments/{{d}}/logs", self.deployment_logs),
        ]

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler):
        if request.path.startswith("/api/"):
            header = request.headers.get("Authorization", "")
            given = header[7:].encode() if header[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, self._token):
                unauthorized = _error(401, "Unauthorized", "missing or wrong admin token")
                unauthorized.headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: on every 401
                return unauthorized
        # An HTTPException of a handler becomes a JSON error in serving.admin_errors.
        return await handler(request)

    # -- helpers ------------------------------------------------------------------------
    async def _record_or_404(self, name: str):
        record = await asyncio.to_thread(self._store.get_endpoint, name)
        if record is None:
            raise web.HTTPNotFound(text=await self._not_online(name) or f"no endpoint '{name}'")
        return record

    async def _deployment_or_404(self, endpoint: str, name: str):
        deployment = await asyncio.to_thread(self._store.get_deployment, endpoint, name)
        if deployment is None:
            raise web.HTTPNotFound(text=await self._not_online(endpoint)
                                   or f"no deployment '{name}' on endpoint '{endpoint}'")
        return deployment

    async def _not_online(self, name: str) -> str | None:
        """Why a verb of online endpoints finds nothing when `name` is a batch endpoint."""
        if self._batch is None or await asyncio.to_thread(self._batch.keys, name) is None:
            return None
        return (f"'{name}' is a batch endpoint; this is for online endpoints "
                "(batch ones: scoregate batch invoke|list|show, job ...)")

    async def _json_body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    # -- handlers -----------------------------------------------------------------------
    async def apply(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        raw_docs = body.get("documents")
        if not isinstance(raw_docs, list) or not raw_docs:
            return _error(400, "ValidationError", "'documents' must be a non-empty list")
        try:
            documents = [Document(str(d["source"]), str(d["base_dir"]), d["body"]) for d in raw_docs]
        except (KeyError, TypeError):
            return _error(400, "ValidationError", "each document needs source, base_dir and body")
        async with self._changing:
            try:
                applied = await asyncio.to_thread(parse_documents, documents, self._store, self._batch)
            except ManifestError as exc:
                return _error(400, "ValidationError", str(exc))
            refused = self._traffic_to_failed(applied.online) or await self._traffic_to_nothing(applied.online)
            if refused:
                return _error(400, "ValidationError", refused)
            retry = await self._failed(applied.online)
            try:
                await asyncio.to_thread(write, applied, self._store, self._batch, retry)
            except BatchStoreError as exc:
                return _error(400, "ValidationError", str(exc))
        self._controller.notify()
        return web.json_response({"applied": await self._with_attempts(applied.summary(), retry)})

    async def _failed(self, applied) -> set[tuple[str, str]]:
        """The applied deployments whose failed version is applied again, unchanged: this
        apply is a new attempt of each (as every PUT of Azure ML's is a new provisioning
        attempt; the cause may have been outside the YAML). A changed version is an update
        with a rollout of its own, and the others' unchanged apply stays a no-op."""
        candidates = [(d, rollout.spec_hash) for d in applied.deployments
                      if (rollout := self._controller.rollouts.rollout((d.endpoint_name, d.name))) is not None
                      and rollout.state == FAILED]
        if not candidates:
            return set()
        # The version hashes the instance type's content: as the store will read it after this apply.
        types = {t.name: t for t in await asyncio.to_thread(self._store.list_instance_types)}
        types.update((t.name, t) for t in applied.instance_types)
        return {(d.endpoint_name, d.name) for d, spec_hash in candidates
                if with_instance_type(d, types.values()).replica_spec_hash() == spec_hash}

    async def _with_attempts(self, summary: list[dict], retry: set[tuple[str, str]]) -> list[dict]:
        """Tell the user which deployments get a new attempt, and its number (the `attempt`
        its rollout will show, which `apply --wait` waits for)."""
        if not retry:
            return summary
        records = await asyncio.to_thread(self._store.list_deployment_records)
        attempts = {(r.deployment.endpoint_name, r.deployment.name): r.attempt for r in records}
        for entry in summary:
            key = (entry.get("endpoint_name"), entry["name"])
            if entry["kind"] == "deployment" and key in retry:
                entry.update(new_attempt=True, attempt=attempts.get(key, ""),
                             message="its last rollout failed: a new attempt starts")
        return summary

    def _traffic_to_failed(self, applied) -> str | None:
        """Traffic may not go to a deployment whose only version failed to roll out
        (unless this apply brings a new version of it)."""
        renewed = {(d.endpoint_name, d.name) for d in applied.deployments}
        for endpoint in applied.endpoints:
            for name, weight in {**endpoint.traffic, **endpoint.mirror_traffic}.items():
                key = (endpoint.name, name)
                rollout = self._controller.rollouts.rollout(key)
                if weight > 0 and key not in renewed and rollout is not None and rollout.state == "Failed" \
                        and rollout.kind == "create":
                    return f"traffic.{name}: deployment '{name}' {rollout.failure()}; apply a fixed version first"
        return None

    async def _traffic_to_nothing(self, applied) -> str | None:
        """Traffic, live or mirrored, may not go to a deployment with no replicas to serve
        it (replica_floor 0): every request would get 503 NoReadyReplica, yet the deployment
        shows Succeeded. Checked for the endpoints applied (their new split) and for the
        deployments applied (the traffic their stored endpoint gives them)."""
        endpoints = {e.name: e for e in applied.endpoints}
        deployments = {(d.endpoint_name, d.name): d for d in applied.deployments}
        for endpoint in applied.endpoints:
            for name in {**endpoint.traffic, **endpoint.mirror_traffic}:
                if (endpoint.name, name) in deployments:
                    continue  # its applied version counts
                stored = await asyncio.to_thread(self._store.get_deployment, endpoint.name, name)
                if stored is not None:
                    deployments[(endpoint.name, name)] = stored
        for (endpoint_name, name), deployment in deployments.items():
            if replica_floor(deployment) > 0:
                continue
            if endpoint_name not in endpoints:
                record = await asyncio.to_thread(self._store.get_endpoint, endpoint_name)
                endpoints[endpoint_name] = record.endpoint if record is not None else None
            carried = _traffic_naming(endpoints[endpoint_name], name)
            if carried:
                return (f"{carried}: deployment '{name}' has no instances to serve it ({_why_none(deployment)});"
                        " give it instances or move its traffic first")
        return None

    async def list_endpoints(self, _request: web.Request) -> web.Response:
        """Online endpoints, then batch endpoints (`kind` tells them apart)."""
        records = await asyncio.to_thread(self._store.list_endpoints)
        deployments = await asyncio.to_thread(self._store.list_deployments)
        views = [endpoint_view(r, [d for d in deployments if d.endpoint_name == r.endpoint.name],
                               self.scoring_url) for r in records]
        if self._batch is not None:
            views += await asyncio.to_thread(self._batch.list_endpoints)
        return web.json_response(views)

    def _deleting_view(self, endpoint: str, deployment: str | None = None) -> web.Response | None:
        """While an object's replicas are still stopping, show it as Deleting."""
        if (endpoint, None) not in self._controller.deleting and (endpoint, deployment) not in self._controller.deleting:
            return None
        replicas = [r for r in self._backend.observe()
                    if r.endpoint == endpoint and (deployment is None or r.deployment == deployment)]
        view = {"name": deployment or endpoint, "provisioning_state": "Deleting",
                "replicas": [{"replica_id": r.replica_id, "state": r.state, "pid": r.pid} for r in replicas]}
        if deployment is not None:
            view["endpoint_name"] = endpoint
        return web.json_response(view)

    async def show_endpoint(self, request: web.Request) -> web.Response:
        deleting = self._deleting_view(request.match_info["e"])
        if deleting is not None:
            return deleting
        name = request.match_info["e"]
        if await self._batch_keys(name) is not None:  # listed with the online ones, so shown too
            return web.json_response(await asyncio.to_thread(self._batch.show_endpoint, name))
        record = await self._record_or_404(name)
        deployments = await asyncio.to_thread(self._store.list_deployments, record.endpoint.name)
        return web.json_response(endpoint_view(record, deployments, self.scoring_url))

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        if await self._batch_keys(name) is not None:
            await self._batch.delete_endpoint(name)
            return web.json_response({"deleted": name})
        self._controller.deleting[(name, None)] = time.time()
        try:
            async with self._changing:
                deleted = await asyncio.to_thread(self._store.delete_endpoint, name)
            if not deleted:
                return _error(404, "NotFound", f"no endpoint '{name}'")
            self._controller.notify()
            await self._wait_gone(lambda r: r.endpoint == name)
        finally:
            self._controller.deleting.pop((name, None), None)
        return web.json_response({"deleted": name})

    async def _wait_gone(self, match) -> None:
        deadline = time.monotonic() + DELETE_WAIT_S
        while time.monotonic() < deadline and any(match(r) for r in self._backend.observe()):
            await asyncio.sleep(0.05)

    async def get_keys(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        keys = await self._batch_keys(name)
        if keys is not None:
            return web.json_response({"primaryKey": keys[0], "secondaryKey": keys[1]})
        record = await self._record_or_404(name)
        return web.json_response({"primaryKey": record.primary_key, "secondaryKey": record.secondary_key})

    async def _batch_keys(self, name: str):
        """Keys of a batch endpoint of that name (names are unique across both kinds)."""
        if self._batch is None or await asyncio.to_thread(self._store.get_endpoint, name) is not None:
            return None
        return await asyncio.to_thread(self._batch.keys, name)

    async def regenerate_keys(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        body = await self._json_body(request)
        if await self._batch_keys(name) is not None:
            try:
                keys = await asyncio.to_thread(self._batch.regenerate_key, name, str(body.get("key_type", "primary")))
            except BatchStoreError as exc:
                return _error(400, "ValidationError", str(exc))
            return web.json_response({"primaryKey": keys[0], "secondaryKey": keys[1]})
        await self._record_or_404(name)
        try:
            record = await asyncio.to_thread(
                self._store.regenerate_key, request.match_info["e"], str(body.get("key_type", "primary")))
        except StoreError as exc:
            return _error(400, "ValidationError", str(exc))
        self._controller.notify()
        await self._controller.reconcile_once()  # the new key works when this returns
        return web.json_response({"primaryKey": record.primary_key, "secondaryKey": record.secondary_key})

    async def get_token(self, request: web.Request) -> web.Response:
        record = await self._record_or_404(request.match_info["e"])
        if record.endpoint.auth_mode != "aml_token" or self._tokens is None:
            return _error(400, "ValidationError", f"endpoint '{record.endpoint.name}' uses auth_mode "
                          f"{record.endpoint.auth_mode}; tokens are for aml_token endpoints "
                          "(use get-credentials for keys)")
        body = await self._json_body(request) if request.can_read_body else {}
        lifetime = body.get("lifetime_s", 3600)
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not 1 <= lifetime <= 86400:
            return _error(400, "ValidationError", "lifetime_s must be a number of seconds from 1 to 86400")
        return web.json_response(self._tokens.issue(record.endpoint.name, lifetime))

    async def list_instance_types(self, _request: web.Request) -> web.Response:
        from .resources import DEFAULT_INSTANCE

        types = {t.name: t for t in await asyncio.to_thread(self._store.list_instance_types)}
        types.setdefault(DEFAULT_INSTANCE.name, DEFAULT_INSTANCE)
        return web.json_response([t.to_dict() for t in sorted(types.values(), key=lambda t: t.name)])

    async def list_deployments(self, request: web.Request) -> web.Response:
        if await self._batch_keys(request.match_info["e"]) is not None:  # a batch endpoint's, as endpoint show
            return web.json_response(await asyncio.to_thread(self._batch.list_deployments, request.match_info["e"]))
        record = await self._record_or_404(request.match_info["e"])
        deployments = await asyncio.to_thread(self._store.list_deployments, record.endpoint.name)
        replicas = self._backend.observe()
        return web.json_response([self._view(d, replicas) for d in deployments])

    async def show_deployment(self, request: web.Request) -> web.Response:
        if await self._batch_keys(request.match_info["e"]) is not None:
            return await deployment_shown(self._batch, request.match_info["e"], request.match_info["d"])
        if await asyncio.to_thread(self._store.get_deployment, request.match_info["e"], request.match_info["d"]) is None:
            deleting = self._deleting_view(request.match_info["e"], request.match_info["d"])
            if deleting is not None:
                return deleting
        deployment = await self._deployment_or_404(request.match_info["e"], request.match_info["d"])
        return web.json_response(self._view(deployment, self._backend.observe()))

    async def delete_deployment(self, request: web.Request) -> web.Response:
        endpoint, name = request.match_info["e"], request.match_info["d"]
        if await self._batch_keys(endpoint) is not None:  # a batch endpoint's, as list and show
            return await deployment_deleted(self._batch, endpoint, name)
        await self._deployment_or_404(endpoint, name)
        self._controller.deleting[(endpoint, name)] = time.time()
        try:
            try:
                async with self._changing:
                    await asyncio.to_thread(self._store.delete_deployment, endpoint, name)
            except StoreError as exc:
                return _error(409, "Conflict", str(exc))
            self._controller.notify()
            await self._wait_gone(lambda r: r.endpoint == endpoint and r.deployment == name)
        finally:
            self._controller.deleting.pop((endpoint, name), None)
        return web.json_response({"deleted": name, "endpoint_name": endpoint})

    async def scale_deployment(self, request: web.Request) -> web.Response:
        endpoint, name = request.match_info["e"], request.match_info["d"]
        await self._deployment_or_404(endpoint, name)
        body = await self._json_body(request)
        count = body.get("instance_count")
        async with self._changing:  # read again under the lock: what the check and the write see
            return await self._scale(endpoint, name, count)

    async def _scale(self, endpoint: str, name: str, count) -> web.Response:
        current = await self._deployment_or_404(endpoint, name)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_INSTANCE_COUNT:
            return _error(400, "ValidationError", f"instance_count must be an integer from 0 to {MAX_INSTANCE_COUNT}")
        if replica_floor(replace(current, instance_count=count)) == 0:
            record = await asyncio.to_thread(self._store.get_endpoint, endpoint)
            carried = _traffic_naming(record.endpoint if record is not None else None, name)
            if carried:
                return _error(409, "Conflict", f"deployment '{name}' carries {carried} of endpoint '{endpoint}':"
                              " scaling it to 0 instances would leave that traffic no replica; move the traffic"
                              f" first (scoregate endpoint update -n {endpoint} --traffic ...)")
        deployment = await asyncio.to_thread(self._store.set_instance_count, endpoint, name, count)
        self._controller.notify()
        return web.json_response(self._view(deployment, self._backend.observe()))

    async def deployment_logs(self, request: web.Request) -> web.Response:
        endpoint, name = request.match_info["e"], request.match_info["d"]
        await self._deployment_or_404(endpoint, name)
        try:
            lines = min(10_000, int(request.query.get("lines", "100")))
        except ValueError:
            lines = -1
        if lines < 0:
            return _error(400, "ValidationError", "lines must be a whole number from 0 to 10000")
        # 0 lines are none (a backend's tail of 0 may be the whole log).
        text = await asyncio.to_thread(self._backend.logs, endpoint, name, lines) if lines else ""
        return web.Response(text=text + ("\n" if text else ""), content_type="text/plain")
