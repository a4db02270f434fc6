"""KubernetesBackend: the Backend protocol on apps/v1 Deployments, Services and pods.

How the protocol's per-replica verbs map onto Deployments (see replicas.py for observe):
- start_replica(d, hash): the version's target += 1; the first time, its Service (one per
  scoregate deployment) and its apps/v1 Deployment (one per version) are created.
- stop_replica(pod): the pod is marked (pod-deletion-cost -1000, scoregate.io/stop-requested)
  *before* the target goes down by one, so the ReplicaSet controller removes that pod.
- forget(exited pod): hidden from observe() at once, target -= 1, and the pod is deleted
  after the next write; the StartReplica the planner issues with it raises the target back,
  so the ReplicaSet controller creates a fresh pod in its place.
- A version whose target is 0 and that has no pods left is deleted, and the Service with
  the last version of its deployment.
Targets live in memory and one writer turns them into `spec.replicas` (absolute values,
re-read and retried on 409 Conflict, bounded back-off on other API errors), so a replayed
write never doubles a change. A restarted backend adopts what it finds (target =
spec.replicas), so a controller restart converges without creating or deleting anything.
close() leaves the cluster as it is. Only this package imports kubernetes_asyncio.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import defaultdict, deque
from datetime import datetime, timezone
from typing import Callable, Iterable

from ...resources import Deployment
from .. import EXITED, ReplicaView
from . import names
from .api import DEPLOYMENTS, PODS, SERVICES, Backoff, KubeApi, status_of
from .podstatus import INIT, MODEL_DOWNLOAD, RUNNING, assess_pod, parse_time
from .replicas import PLACEHOLDER_MARK, ObservationMemory, Version, pod_uid, replica_views, version_key_of_pod
from .watching import DELETED, ObjectCache
from .workloads import PlacementResolver, StaticPlacement, WorkloadSettings, render_deployment, render_service

log = logging.getLogger("scoregate.backend.kubernetes")
MAX_CONFLICT_RETRIES = 5


def _replica_failure(deployment: dict | None) -> str:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return condition.get("message") or condition.get("reason") or "ReplicaFailure"
    return ""


class KubernetesBackend:
    def __init__(self, api: KubeApi, *, namespaces: Iterable[str] | None = ("default",),
                 placement: PlacementResolver | None = None, settings: WorkloadSettings = WorkloadSettings(),
                 on_change: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
                 sync_timeout_s: float = 60.0, watch_timeout_s: int = 300) -> None:
        self._api = api
        self._namespaces = tuple(namespaces) if namespaces is not None else None
        self._placement = placement or StaticPlacement((self._namespaces or ("default",))[0])
        self._settings = settings
        self.on_change = on_change
        self._clock = clock
        self._sync_timeout_s = sync_timeout_s
        selector = names.MANAGED_REPLICAS_SELECTOR
        common = dict(namespaces=self._namespaces, label_selector=selector, watch_timeout_s=watch_timeout_s)
        self._deployments = ObjectCache(api, DEPLOYMENTS, on_event=self._on_deployment_event, **common)
        self._pods = ObjectCache(api, PODS, on_event=self._on_pod_event, **common)
        self._services = ObjectCache(api, SERVICES, on_event=self._on_service_event, **common)
        self._versions: dict[tuple[str, str], Version] = {}
        self._hidden: set[str] = set()  # uids of forgotten pods
        self._memory = ObservationMemory()
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._backoffs: dict[tuple[str, str], Backoff] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._logs: dict[tuple[str, str], deque[str]] = defaultdict(lambda: deque(maxlen=500))
        self._logged: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        for cache in (self._services, self._deployments, self._pods):
            await cache.start(self._sync_timeout_s)
        self._dirty.update(self._versions)  # collect what a previous run left half-done
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="kubernetes writer")
        self._wake.set()
        self.on_change()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([self._writer] if self._writer else []), *self._tasks, return_exceptions=True)
        self._writer = None
        for cache in (self._pods, self._deployments, self._services):
            await cache.close()

    # -- commands -------------------------------------------------------------------------
    async def start_replica(self, deployment: Deployment, spec_hash: str, restarts: int = 0) -> str:
        placement = self._placement.placement(deployment)
        if self._namespaces is not None and placement.namespace not in self._namespaces:
            raise ValueError(f"namespace {placement.namespace!r} is not watched by this controller")
        version = self._version_for(deployment, spec_hash, placement.namespace)
        version.manifest = render_deployment(deployment, spec_hash, 0, placement, self._settings)
        version.service = render_service(deployment, placement)
        version.instance_type = placement.instance_type.name
        version.restarts = max(version.restarts, restarts)
        version.target += 1
        self.on_change()
        await self._sync(version.key)
        return f"{version.namespace}/{version.name}{PLACEHOLDER_MARK}{version.target - 1}"

    async def stop_replica(self, replica_id: str) -> None:
        version, pod = self._resolve(replica_id)
        if version is None:
            return
        if pod is not None:
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                return
            version.draining.add(pod["metadata"]["name"])
        version.target = max(0, version.target - 1)
        self.on_change()
        await self._sync(version.key)

    def forget(self, replica_id: str) -> None:
        """Drop an exited replica: hide it now, delete its pod after the next write."""
        version, pod = self._resolve(replica_id)
        if version is None:
            return
        if pod is not None:
            self._hidden.add(pod_uid(pod))
            version.draining.add(pod["metadata"]["name"])
            version.forgotten.add(pod["metadata"]["name"])
        version.target = max(0, version.target - 1)
        self._mark_dirty(version.key)

    def observe(self) -> list[ReplicaView]:
        now = self._clock()
        pods_by_version: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for pod in self._pods.values():
            key = version_key_of_pod(pod)
            if key is not None:
                pods_by_version[key].append(pod)
        views: list[ReplicaView] = []
        for key in list(self._versions) + [k for k in pods_by_version if k not in self._versions]:
            version = self._versions.get(key) or self._orphan(pods_by_version[key][0])
            failure = _replica_failure(self._deployments.get(*key))
            views.extend(replica_views(version, pods_by_version.get(key, []), self._hidden, self._memory, now,
                                       failure))
        return views

    def logs(self, endpoint: str, deployment: str, lines: int = 100) -> str:
        """The last lines of the pods of a deployment that failed (fetched when they failed)."""
        kept = list(self._logs.get((endpoint, deployment), ()))
        return "\n".join(kept[-max(1, lines):])

    async def fetch_logs(self, endpoint: str, deployment: str, lines: int = 100) -> str:
        """The last lines of every current pod of a deployment, read now."""
        out = []
        for pod in self._pods.values():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get(names.LABEL_ENDPOINT) == endpoint and labels.get(names.LABEL_DEPLOYMENT) == deployment:
                meta = pod["metadata"]
                try:
                    text = await self._api.read_log(meta["namespace"], meta["name"], "model-server", tail_lines=lines)
                except Exception as exc:
                    text = f"(no logs: {exc})"
                out += [f"[{meta['name']}] {line}" for line in text.splitlines()]
        return "\n".join(out[-max(1, lines):])

    # -- versions -------------------------------------------------------------------------
    def _version_for(self, deployment: Deployment, spec_hash: str, namespace: str) -> Version:
        name = names.version_name(deployment.endpoint_name, deployment.name, spec_hash)
        version = self._versions.get((namespace, name))
        if version is None:
            existing = self._deployments.get(namespace, name)
            target = int(((existing or {}).get("spec") or {}).get("replicas") or 0)
            version = Version(namespace, name, deployment.endpoint_name, deployment.name, spec_hash, target,
                              created_at=self._clock())
            self._versions[version.key] = version
        return version

    def _adopt(self, obj: dict) -> Version | None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        try:
            endpoint, deployment = labels[names.LABEL_ENDPOINT], labels[names.LABEL_DEPLOYMENT]
            spec_hash = labels[names.LABEL_SPEC_HASH]
        except KeyError:
            return None
        version = Version(meta.get("namespace", ""), meta["name"], endpoint, deployment, spec_hash,
                          int((obj.get("spec") or {}).get("replicas") or 0),
                          instance_type=(meta.get("annotations") or {}).get(names.ANNOTATION_INSTANCE_TYPE, ""),
                          created_at=parse_time(meta.get("creationTimestamp")) or self._clock())
        self._versions[version.key] = version
        log.info("adopted %s/%s with %d replicas", version.namespace, version.name, version.target)
        return version

    def _orphan(self, pod: dict) -> Version:
        labels = pod["metadata"]["labels"]
        key = version_key_of_pod(pod)
        return Version(key[0], key[1], labels[names.LABEL_ENDPOINT], labels[names.LABEL_DEPLOYMENT],
                       labels[names.LABEL_SPEC_HASH], 0)

    def _resolve(self, replica_id: str) -> tuple[Version | None, dict | None]:
        if PLACEHOLDER_MARK in replica_id:
            namespace, _, rest = replica_id.partition("/")
            return self._versions.get((namespace, rest.split(PLACEHOLDER_MARK)[0])), None
        namespace, _, name = replica_id.partition("/")
        pod = self._pods.get(namespace, name)
        key = version_key_of_pod(pod) if pod else None
        return (self._versions.get(key), pod) if key else (None, None)

    # -- watch events ---------------------------------------------------------------------
    def _on_deployment_event(self, kind: str, obj: dict) -> None:
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        version = self._versions.get(key)
        if version is None and kind != DELETED:
            version = self._adopt(obj)
        if version is not None and (kind == DELETED or (obj.get("spec") or {}).get("replicas") != version.target):
            self._mark_dirty(key)
        self.on_change()

    def _on_pod_event(self, kind: str, obj: dict) -> None:
        uid = pod_uid(obj)
        key = version_key_of_pod(obj)
        version = self._versions.get(key) if key else None
        if kind == DELETED:
            self._hidden.discard(uid)
            self._memory.ever_ready.discard(uid)
            self._memory.failed_since.pop(uid, None)
            self._logged.discard(uid)
            if version is not None:
                version.draining.discard(obj["metadata"]["name"])
                if version.target == 0:
                    self._mark_dirty(version.key)
        elif version is not None and uid not in self._logged:
            verdict = assess_pod(obj, instance_type=version.instance_type,
                                 ever_ready=uid in self._memory.ever_ready)
            if verdict.state == EXITED and verdict.stage in (MODEL_DOWNLOAD, INIT, RUNNING):
                self._logged.add(uid)
                self._spawn(self._keep_logs(version, obj, verdict.stage == MODEL_DOWNLOAD))
        self.on_change()

    def _on_service_event(self, kind: str, obj: dict) -> None:
        if kind == DELETED:
            labels = obj["metadata"].get("labels") or {}
            for version in self._versions.values():
                if (version.namespace, version.endpoint, version.deployment) == (
                        obj["metadata"].get("namespace"), labels.get(names.LABEL_ENDPOINT),
                        labels.get(names.LABEL_DEPLOYMENT)):
                    self._mark_dirty(version.key)

    async def _keep_logs(self, version: Version, pod: dict, init_container: bool) -> None:
        meta = pod["metadata"]
        container = "fetch-model" if init_container else "model-server"
        restarted = any(s.get("restartCount", 0) > 0 for s in (pod.get("status") or {}).get("containerStatuses") or [])
        try:
            text = await self._api.read_log(meta["namespace"], meta["name"], container, tail_lines=100,
                                            previous=restarted and not init_container)
        except Exception as exc:
            text = f"(no logs: {exc})"
        kept = self._logs[(version.endpoint, version.deployment)]
        kept.extend(f"[{meta['name']}/{container}] {line}" for line in text.splitlines())

    # -- the writer -----------------------------------------------------------------------
    def _mark_dirty(self, key: tuple[str, str]) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                await self._sync(self._dirty.pop())

    async def _sync(self, key: tuple[str, str]) -> bool:
        """Write one version out; on failure retry later with back-off. True if done."""
        version = self._versions.get(key)
        if version is None:
            return True
        async with self._locks[(version.namespace, version.endpoint, version.deployment)]:
            try:
                await self._sync_version(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = status_of(exc)
                version.error = f"HTTP {status}: {getattr(exc, 'reason', '')}" if status else str(exc)
                delay = self._backoffs.setdefault(key, Backoff()).next_delay()
                log.warning("writing %s/%s failed (%s); retrying in %.1f s", *key, version.error, delay)
                asyncio.get_running_loop().call_later(delay, self._mark_dirty, key)
                self.on_change()
                return False
        version.error = ""
        self._backoffs.pop(key, None)
        return True

    async def _sync_version(self, version: Version) -> None:
        current = self._deployments.get(version.namespace, version.name)
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
            self._deployments.put(await self._api.create(DEPLOYMENTS, ns, body))
            log.info("created Deployment %s/%s with %d replicas", ns, name, version.target)
            return
        replicas = (current.get("spec") or {}).get("replicas")
        if replicas != version.target:
            if replicas is None or version.target < replicas:
                await self._mark_draining(version)
            body = copy.deepcopy(current)
            body["spec"]["replicas"] = version.target
            self._deployments.put(await self._api.replace(DEPLOYMENTS, ns, name, body))
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
        if not siblings and self._services.get(version.namespace, service) is not None:
            await self._delete(SERVICES, version.namespace, service)
            self._services.discard(version.namespace, service)
            log.info("deleted Service %s/%s", version.namespace, service)

    async def _ensure_service(self, version: Version) -> None:
        name = names.service_name(version.endpoint, version.deployment)
        if self._services.get(version.namespace, name) is not None:
            return
        body = version.service or render_service(
            Deployment(name=version.deployment, endpoint_name=version.endpoint), StaticPlacement(version.namespace)
            .placement(Deployment(name=version.deployment, endpoint_name=version.endpoint)))
        try:
            self._services.put(await self._api.create(SERVICES, version.namespace, body))
            log.info("created Service %s/%s", version.namespace, name)
        except Exception as exc:
            if status_of(exc) != 409:  # already there: the watch brings it
                raise

    async def _delete(self, kind, namespace: str, name: str, uid: str | None = None) -> None:
        try:
            await self._api.delete(kind, namespace, name, uid=uid)
        except Exception as exc:
            if status_of(exc) not in (404, 409):  # gone already, or another incarnation (uid precondition)
                raise
