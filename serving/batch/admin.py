"""Batch resources on the admin port (behind the admin token), for the CLI.

    GET    /api/v1/batch/endpoints                          list
    GET    /api/v1/batch/endpoints/{e}                      show
    DELETE /api/v1/batch/endpoints/{e}                      delete (cancels its jobs)
    GET    /api/v1/batch/endpoints/{e}/keys                 {primaryKey, secondaryKey}
    POST   /api/v1/batch/endpoints/{e}/regenerate-keys      {"key_type": "primary" | "secondary"}
    GET    /api/v1/batch/endpoints/{e}/deployments          list
    GET    /api/v1/batch/endpoints/{e}/deployments/{d}      show
    DELETE /api/v1/batch/endpoints/{e}/deployments/{d}      delete
    GET    /api/v1/batch/endpoints/{e}/jobs/{j}/logs        the job's log and its workers' logs, text
Errors are JSON {code, message}, like the rest of the admin API.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .store import BatchStoreError


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _missing(name: str) -> web.Response:
    return _error(404, "NotFound", f"no batch endpoint '{name}'")


async def deployment_shown(service, endpoint: str, name: str) -> web.Response:
    """A batch deployment's view, or 404: this admin route's answer and the management
    API's (`scoregate deployment show` names online and batch deployments alike)."""
    view = await asyncio.to_thread(service.show_deployment, endpoint, name)
    if view is None:
        return _error(404, "NotFound", f"no deployment '{name}' on batch endpoint '{endpoint}'")
    return web.json_response(view)


async def deployment_deleted(service, endpoint: str, name: str) -> web.Response:
    """Delete a batch deployment (jobs already accepted keep running: they carry a snapshot
    of it); 409 for the endpoint's default one, 404 for none: answered for both APIs."""
    try:
        deleted = await asyncio.to_thread(service.delete_deployment, endpoint, name)
    except BatchStoreError as exc:
        return _error(409, "Conflict", str(exc))
    if not deleted:
        return _error(404, "NotFound", f"no deployment '{name}' on batch endpoint '{endpoint}'")
    return web.json_response({"deleted": name, "endpoint_name": endpoint})


class AdminRoutes:
    def __init__(self, service) -> None:
        self._service = service

    def routes(self) -> list[web.RouteDef]:
        p = "/api/v1/batch/endpoints"
        return [
            web.get(p, self.list_endpoints),
            web.get(p + "/{e}", self.show_endpoint),
            web.delete(p + "/{e}", self.delete_endpoint),
            web.get(p + "/{e}/keys", self.get_keys),
            web.post(p + "/{e}/regenerate-keys", self.regenerate_keys),
            web.get(p + "/{e}/deployments", self.list_deployments),
            web.get(p + "/{e}/deployments/{d}", self.show_deployment),
            web.delete(p + "/{e}/deployments/{d}", self.delete_deployment),
            web.get(p + "/{e}/jobs/{j}/logs", self.job_logs),
        ]

    async def list_endpoints(self, _request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._service.list_endpoints))

    async def show_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        view = await asyncio.to_thread(self._service.show_endpoint, name)
        return web.json_response(view) if view is not None else _missing(name)

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        if not await self._service.delete_endpoint(name):
            return _missing(name)
        return web.json_response({"deleted": name})

    async def get_keys(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        keys = await asyncio.to_thread(self._service.keys, name)
        if keys is None:
            return _missing(name)
        return web.json_response({"primaryKey": keys[0], "secondaryKey": keys[1]})

    async def regenerate_keys(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "ValidationError", "the body must be a JSON object")
        try:
            keys = await asyncio.to_thread(self._service.regenerate_key, name, str(body.get("key_type", "primary")))
        except BatchStoreError as exc:
            return _error(400, "ValidationError", str(exc))
        if keys is None:
            return _missing(name)
        return web.json_response({"primaryKey": keys[0], "secondaryKey": keys[1]})

    async def list_deployments(self, request: web.Request) -> web.Response:
        name = request.match_info["e"]
        views = await asyncio.to_thread(self._service.list_deployments, name)
        return web.json_response(views) if views is not None else _missing(name)

    async def show_deployment(self, request: web.Request) -> web.Response:
        return await deployment_shown(self._service, request.match_info["e"], request.match_info["d"])

    async def delete_deployment(self, request: web.Request) -> web.Response:
        return await deployment_deleted(self._service, request.match_info["e"], request.match_info["d"])

    async def job_logs(self, request: web.Request) -> web.Response:
        endpoint, job_id = request.match_info["e"], request.match_info["j"]
        if await asyncio.to_thread(self._service.store.get_endpoint, endpoint) is None:
            return _missing(endpoint)
        job = await asyncio.to_thread(self._service.jobs.get, job_id, endpoint)
        if job is None:
            return _error(404, "JobNotFound", f"no job '{job_id}' on batch endpoint '{endpoint}'")
        text = await asyncio.to_thread(self._service.job_logs, job, workers=True)
        return web.Response(text=text, content_type="text/plain")
