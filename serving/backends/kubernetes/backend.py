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
Targets live in memory and one writer (writing.py) turns them into `spec.replicas`
(absolute values, re-read and retried on 409 Conflict, bounded back-off on other API
errors), so a replayed write never doubles a change. A restarted backend adopts what it finds (target =
spec.replicas), so a controller restart converges without creating or deleting anything.
A Service or Deployment of the name that scoregate did not create is never adopted
(foreign.py): not written, not deleted; `foreign` remembers it for the store.
close() leaves the cluster as it is. Only this package imports kubernetes_asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from dataclasses import replace
from typing import Callable, Iterable

from ...resources import Deployment
from ...store import StoreError
from .. import EXITED, ReplicaView
from . import names
from .api import DEPLOYMENTS, PODS, SERVICES, KubeApi
from .foreign import ForeignObjects
from .podstatus import INIT, MODEL_DOWNLOAD, RUNNING, assess_pod, parse_time
from .replicas import PLACEHOLDER_MARK, ObservationMemory, Version, pod_uid, replica_views, version_key_of_pod
from .watching import DELETED, ObjectCache, start_caches
from .workloads import PlacementResolver, StaticPlacement, WorkloadSettings, render_deployment, render_service
from .writing import VersionWriter

log = logging.getLogger("scoregate.backend.kubernetes")


def _replica_failure(deployment: dict | None) -> str:
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return condition.get("message") or condition.get("reason") or "ReplicaFailure"
    return ""


class KubernetesBackend:
    def __init__(self, api: KubeApi, *, namespaces: Iterable[str] | None = ("default",),
                 placement: PlacementResolver | None = None, settings: WorkloadSettings = WorkloadSettings(),
                 on_change: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.time,
                 sync_timeout_s: float = 60.0, watch_timeout_s: int = 300,
                 foreign: ForeignObjects | None = None) -> None:
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
        self._writer = VersionWriter(api, self._versions, deployments=self._deployments, pods=self._pods,
                                     services=self._services, on_change=lambda: self.on_change(),
                                     foreign=foreign, owner=self._owner_of)
        self.foreign = self._writer.foreign
        self._tasks: set[asyncio.Task] = set()
        self._logs: dict[tuple[str, str], deque[str]] = defaultdict(lambda: deque(maxlen=500))
        self._logged: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        # all at once (one timeout for all); pods listed before their Deployment was adopted
        # are looked at again for the logs of those that exited
        await start_caches((self._services, self._deployments, self._pods), self._sync_timeout_s)
        for pod in self._pods.values():
            key = version_key_of_pod(pod)
            if key in self._versions:
                self._keep_logs_of_exited(self._versions[key], pod)
        self._writer.start()
        self.on_change()

    async def close(self, *, hurried: bool = False) -> None:  # the cluster keeps running either way
        await self._writer.close()
        await self.foreign.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for cache in (self._pods, self._deployments, self._services):
            await cache.close()

    # -- commands -------------------------------------------------------------------------
    async def start_replica(self, deployment: Deployment, spec_hash: str, crash_streak: int = 0,
                            artifacts=None, *, restarts: int = 0) -> str:
        """Target + 1. `artifacts` are ignored: the pod's init container fetches model and code;
        so is `restarts`: a pod counts its own (restartCount)."""
        try:
            placement = self._placement.placement(deployment)
        except StoreError:
            # Refused since this reconcile pass read it: its first replica's write found a
            # name taken by an object scoregate did not create (foreign.py). Start nothing
            # more; the next pass stops what was started.
            started = next((v for v in self._versions.values() if (v.endpoint, v.deployment, v.spec_hash)
                            == (deployment.endpoint_name, deployment.name, spec_hash)), None)
            if started is None:
                raise
            return f"{started.namespace}/{started.name}{PLACEHOLDER_MARK}{max(0, started.target - 1)}"
        if deployment.resolved_instance_type is not None:
            # The content this version was hashed with: a rollback to the last good version
            # renders its old resources and nodeSelector, not the edited InstanceType's.
            placement = replace(placement, instance_type=deployment.resolved_instance_type)
        if self._namespaces is not None and placement.namespace not in self._namespaces:
            raise ValueError(f"namespace {placement.namespace!r} is not watched by this controller")
        version = self._version_for(deployment, spec_hash, placement.namespace)
        version.manifest = render_deployment(deployment, spec_hash, 0, placement, self._settings)
        version.service = render_service(deployment, placement)
        version.instance_type = placement.instance_type.name
        version.restarts = max(version.restarts, crash_streak)
        version.target += 1
        self.on_change()
        await self._writer.sync(version.key)
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
        await self._writer.sync(version.key)

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
        self._writer.mark_dirty(version.key)

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

    def _owner_of(self, endpoint: str, deployment: str) -> dict | None:
        """The ownerReference of a deployment's objects, from its placement (None: unknown,
        e.g. its OnlineDeployment is gone)."""
        try:
            return self._placement.placement(Deployment(name=deployment, endpoint_name=endpoint)).owner
        except Exception:
            return None

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
            self._writer.mark_dirty(key)
        self.on_change()

    def _on_pod_event(self, kind: str, obj: dict) -> None:
        uid = pod_uid(obj)
        key = version_key_of_pod(obj)
        version = self._versions.get(key) if key else None
        if kind == DELETED:
            self._hidden.discard(uid)
            self._memory.ever_ready.discard(uid)
            self._memory.failed_since.pop(uid, None)
            self._memory.log_tails.pop(uid, None)
            self._logged.discard(uid)
            if version is not None:
                version.draining.discard(obj["metadata"]["name"])
                if version.target == 0:
                    self._writer.mark_dirty(version.key)
        elif version is not None:
            self._keep_logs_of_exited(version, obj)
        self.on_change()

    def _keep_logs_of_exited(self, version: Version, pod: dict) -> None:
        uid = pod_uid(pod)
        if uid in self._logged:
            return
        verdict = assess_pod(pod, instance_type=version.instance_type, ever_ready=uid in self._memory.ever_ready)
        if verdict.state == EXITED and verdict.stage in (MODEL_DOWNLOAD, INIT, RUNNING):
            self._logged.add(uid)
            self._spawn(self._keep_logs(version, pod, verdict.stage == MODEL_DOWNLOAD))

    def _on_service_event(self, kind: str, obj: dict) -> None:
        if kind == DELETED:
            labels = obj["metadata"].get("labels") or {}
            for version in self._versions.values():
                if (version.namespace, version.endpoint, version.deployment) == (
                        obj["metadata"].get("namespace"), labels.get(names.LABEL_ENDPOINT),
                        labels.get(names.LABEL_DEPLOYMENT)):
                    self._writer.mark_dirty(version.key)

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
        self._memory.log_tails[pod_uid(pod)] = tuple(text.splitlines()[-20:])
        self.on_change()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
