"""VersionWriter: turns the backend's versions into Deployments and Services.

The single writer of `spec.replicas` (backend.py keeps the targets; this makes them so).
Per scoregate deployment, one write at a time (a lock), so creating a version and
retiring its Service never race. A version is written as an absolute replica count:
- no Deployment yet → create its Service (if missing) and the Deployment;
- `spec.replicas` differs → mark the pods to drain first when scaling down, then replace
  with the resourceVersion read (409 Conflict → re-read and write again, bounded);
- target 0 and no pods left → delete the Deployment (uid precondition), and the Service
  with the last version of its deployment.
A Service or Deployment of the name that scoregate did not create (foreign.py) is never
written or deleted: the write stops with ForeignObjectError, recorded in ForeignObjects
(the store then refuses the OnlineDeployment) and in `Version.error`.
Exited pods the planner forgot are deleted after the write. Any other error backs off
(bounded, jittered) and the version is written again later; `Version.error` says why, in
the API server's words. A create or replace the API server refuses (400, 403, 422: its
validation, an admission webhook or policy, a quota on objects, RBAC) cannot succeed by
being sent again: `Version.refused` says so, and the version's missing replicas are then
failed ones (replicas.py), so its rollout fails at once with that message instead of
waiting out its budget. The write is still tried again (backed off), so a policy or
permission fixed later lets it through.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

from ...resources import Deployment
from . import names
from .api import DEPLOYMENTS, PODS, SERVICES, Backoff, KubeApi, Kind, api_message, status_of
from .foreign import ForeignObjectError, ForeignObjects, owner_of, why_foreign
from .replicas import Version, version_key_of_pod
from .watching import ObjectCache
from .workloads import StaticPlacement, render_service

log = logging.getLogger("scoregate.backend.kubernetes")
MAX_CONFLICT_RETRIES = 5
# Answers that sending the same object again cannot change.
REFUSED_STATUSES = {400, 403, 422}


class RefusedWrite(Exception):
    """The API server refused to create or replace one of a version's objects."""

    def __init__(self, kind: Kind, namespace: str, name: str, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"the Kubernetes API refused {kind.kind} {namespace}/{name} (HTTP {status}): {message}")


async def _refusable(kind: Kind, namespace: str, name: str, call):
    """Await `call` (a create or replace); a refusal becomes RefusedWrite, naming the object."""
    try:
        return await call
    except Exception as exc:
        if (status := status_of(exc)) in REFUSED_STATUSES:
            raise RefusedWrite(kind, namespace, name, status, api_message(exc)) from exc
        raise


class VersionWriter:
    def __init__(self, api: KubeApi, versions: dict[tuple[str, str], Version], *, deployments: ObjectCache,
                 pods: ObjectCache, services: ObjectCache, on_change: Callable[[], None],
                 foreign: ForeignObjects | None = None,
                 owner: Callable[[str, str], dict | None] = lambda _endpoint, _deployment: None) -> None:
        """`owner(endpoint, deployment)`: the ownerReference its objects carry, when known
        (a version adopted after a restart has no rendered manifest to say)."""
        self._api, self._versions = api, versions
        self.foreign = foreign if foreign is not None else ForeignObjects(api)
        self._owner = owner
        self._deployments, self._pods, self._services = deployments, pods, services
        self.on_change = on_change
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._backoffs: dict[tuple[str, str], Backoff] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.passes = 0  # completed passes over the dirty versions; a test that expects no write waits on it

    def start(self) -> None:
        self._dirty.update(self._versions)  # collect what a previous run left half-done
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kubernetes writer")
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def mark_dirty(self, key: tuple[str, str]) -> None:
        self._dirty.add(key)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await self.sync(self._dirty.pop())
            self.passes += 1

    async def sync(self, key: tuple[str, str]) -> bool:
        """Write one version out; on failure retry later with back-off. True if done."""
        version = self._versions.get(key)
        if version is None:
            return True
        async with self._locks[(version.namespace, version.endpoint, version.deployment)]:
            try:
                await self._sync_version(version)
            except asyncio.CancelledError:
                raise
            except ForeignObjectError as exc:
                self.foreign.found(exc)
                version.error = str(exc)
                delay = self._backoffs.setdefault(key, Backoff()).next_delay()
                asyncio.get_running_loop().call_later(delay, self.mark_dirty, key)
                self.on_change()
                return False
            except Exception as exc:
                status = status_of(exc)
                refused = isinstance(exc, RefusedWrite)
                version.refused = str(exc) if refused else ""
                version.error = str(exc) if refused or not status else f"HTTP {status}: {api_message(exc)}"
                delay = self._backoffs.setdefault(key, Backoff()).next_delay()
                log.warning("writing %s/%s failed (%s); retrying in %.1f s", *key, version.error, delay)
                asyncio.get_running_loop().call_later(delay, self.mark_dirty, key)
                self.on_change()
                return False
        version.error = version.refused = ""
        self._backoffs.pop(key, None)
        return True

    def owner(self, version: Version, manifest: dict | None = None) -> dict | None:
        return owner_of(manifest or version.manifest) or self._owner(version.endpoint, version.deployment)

    def _check_own(self, version: Version, kind, obj: dict | None, manifest: dict | None = None) -> dict | None:
        """`obj` if it is this version's own (or None); ForeignObjectError if not."""
        if obj is None:
            return None
        owner = self.owner(version, manifest)
        why = why_foreign(obj, version.endpoint, version.deployment, owner)
        if why is not None:
            raise ForeignObjectError(kind, version.namespace, obj["metadata"]["name"], why, version.endpoint,
                                     version.deployment, owner)
        return obj

    async def _sync_version(self, version: Version) -> None:
        current = self._check_own(version, DEPLOYMENTS, self._deployments.get(version.namespace, version.name))
        for _attempt in range(MAX_CONFLICT_RETRIES):
            try:
                await self._write(version, current)
                break
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
                current = await self._read(version)  # someone else wrote first: re-read, re-apply
        else:
            raise RuntimeError(f"gave up after {MAX_CONFLICT_RETRIES} conflicting writes")
        for pod_name in list(version.forgotten):
            await self._delete(PODS, version.namespace, pod_name)
            version.forgotten.discard(pod_name)

    async def _read(self, version: Version) -> dict | None:
        try:
            current = await self._api.get(DEPLOYMENTS, version.namespace, version.name)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise
        self._check_own(version, DEPLOYMENTS, current)  # not into the cache when foreign
        self._deployments.put(current)
        return current

    async def _write(self, version: Version, current: dict | None) -> None:
        ns, name = version.key
        if current is None:
            if version.target == 0 or version.manifest is None:
                version.target = 0
                await self._retire(version)
                return
            await self._ensure_service(version)
            body = copy.deepcopy(version.manifest)
            body["spec"]["replicas"] = version.target
            self._deployments.put(await _refusable(DEPLOYMENTS, ns, name, self._api.create(DEPLOYMENTS, ns, body)))
            log.info("created Deployment %s/%s with %d replicas", ns, name, version.target)
            return
        replicas = (current.get("spec") or {}).get("replicas")
        if replicas != version.target:
            if replicas is None or version.target < replicas:
                await self._mark_draining(version)
            body = copy.deepcopy(current)
            body["spec"]["replicas"] = version.target
            self._deployments.put(await _refusable(DEPLOYMENTS, ns, name,
                                                   self._api.replace(DEPLOYMENTS, ns, name, body)))
            log.info("scaled Deployment %s/%s from %s to %d replicas", ns, name, replicas, version.target)
        elif version.target == 0 and not self._has_pods(version):
            await self._delete(DEPLOYMENTS, ns, name, uid=current["metadata"].get("uid"))
            self._deployments.discard(ns, name)
            await self._retire(version)
        elif version.target > 0:
            await self._ensure_service(version)

    async def _mark_draining(self, version: Version) -> None:
        """Mark the pods to remove so the ReplicaSet controller removes exactly those."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"metadata": {"annotations": {names.ANNOTATION_DELETION_COST: names.STOP_DELETION_COST,
                                              names.ANNOTATION_STOP_REQUESTED: stamp}}}
        for pod_name in list(version.draining):
            pod = self._pods.get(version.namespace, pod_name)
            if pod is not None and names.ANNOTATION_STOP_REQUESTED not in (pod["metadata"].get("annotations") or {}):
                try:
                    self._pods.put(await self._api.patch(PODS, version.namespace, pod_name, patch))
                except Exception as exc:
                    if status_of(exc) != 404:
                        raise

    def _has_pods(self, version: Version) -> bool:
        return any(version_key_of_pod(p) == version.key for p in self._pods.values())

    async def _retire(self, version: Version) -> None:
        """Forget a version that is gone; delete its Service if it was the last one."""
        if self._has_pods(version):
            return
        self._versions.pop(version.key, None)
        siblings = [v for v in self._versions.values()
                    if (v.namespace, v.endpoint, v.deployment) == (version.namespace, version.endpoint,
                                                                   version.deployment)]
        service = names.service_name(version.endpoint, version.deployment)
        current = self._services.get(version.namespace, service)
        if not siblings and current is not None:
            if why := why_foreign(current, version.endpoint, version.deployment,
                                  self.owner(version, version.service)):
                log.warning("not deleting Service %s/%s: it is not managed by scoregate (%s)",
                            version.namespace, service, why)
                return
            await self._delete(SERVICES, version.namespace, service)
            self._services.discard(version.namespace, service)
            log.info("deleted Service %s/%s", version.namespace, service)

    async def _ensure_service(self, version: Version) -> None:
        name = names.service_name(version.endpoint, version.deployment)
        if self._check_own(version, SERVICES, self._services.get(version.namespace, name), version.service):
            return
        # A version adopted after a restart has no Service rendered: made here, it is still
        # owned by the OnlineDeployment (else deleting that would leave the Service behind).
        body = version.service or render_service(
            Deployment(name=version.deployment, endpoint_name=version.endpoint),
            replace(StaticPlacement(version.namespace).placement(
                Deployment(name=version.deployment, endpoint_name=version.endpoint)), owner=self.owner(version)))
        try:
            self._services.put(await _refusable(SERVICES, version.namespace, name,
                                                self._api.create(SERVICES, version.namespace, body)))
            log.info("created Service %s/%s", version.namespace, name)
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            # already there: scoregate's own (the watch brings it), or someone else's
            self._services.put(self._check_own(version, SERVICES, await self._api.get(SERVICES, version.namespace,
                                                                                       name), body))

    async def _delete(self, kind, namespace: str, name: str, uid: str | None = None) -> None:
        try:
            await self._api.delete(kind, namespace, name, uid=uid)
        except Exception as exc:
            if status_of(exc) not in (404, 409):  # gone already, or another incarnation (uid precondition)
                raise
