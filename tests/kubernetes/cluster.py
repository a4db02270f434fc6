"""FakeCluster: what runs around an API server — workload controllers, scheduler, kubelet.

The emulator (apiserver.py) stores objects; nothing in it creates a pod for a Deployment.
FakeCluster does, in-process, reacting to every change (ApiServerEmulator.listeners) and
writing through the emulator's bookkeeping (so each change is a watch event):
- the Deployment + ReplicaSet controllers, collapsed into one: pods are owned by their
  Deployment directly (the product only reads pod labels and ownership for garbage
  collection); scale-down removes the pod with the lowest pod-deletion-cost first, then
  unscheduled, pending, not ready, newest — the ReplicaSet controller's order; Deployment
  status (replicas, readyReplicas, ReplicaFailure) is kept up to date;
- scheduler + kubelet: `fate(pod)` decides what a new pod becomes. The default is
  scheduled, initialised, Running and Ready; the functions below make the failures.
- a gracefully deleted pod disappears after `termination_delay_s`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import secrets
from datetime import datetime
from typing import Callable

from tests.kubernetes.apiserver import ApiServerEmulator, now_rfc3339

DEPLOYMENTS = ("apps", "v1", "deployments")
PODS = ("", "v1", "pods")
_ips = itertools.count(10)


def _scheduled(pod: dict) -> None:
    pod["spec"]["nodeName"] = "node-1"


def _conditions(ready: bool, scheduled: bool = True, initialized: bool = True) -> list[dict]:
    def c(kind, ok):
        return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now_rfc3339()}
    return [c("PodScheduled", scheduled), c("Initialized", initialized), c("ContainersReady", ready), c("Ready", ready)]


def _init_done(pod: dict) -> list[dict]:
    return [{"name": c["name"], "image": c["image"], "ready": True, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now_rfc3339()}}}
            for c in pod["spec"].get("initContainers", [])]


def _main(pod: dict, state: dict, ready: bool = False, restarts: int = 0, last: dict | None = None) -> list[dict]:
    return [{"name": c["name"], "image": c["image"], "ready": ready, "restartCount": restarts, "started": ready,
             "state": state, "lastState": last or {}} for c in pod["spec"]["containers"]]


def running_ready(pod: dict) -> dict:
    _scheduled(pod)
    return {"phase": "Running", "podIP": f"10.0.0.{next(_ips) % 250}", "startTime": now_rfc3339(),
            "conditions": _conditions(True), "initContainerStatuses": _init_done(pod),
            "containerStatuses": _main(pod, {"running": {"startedAt": now_rfc3339()}}, ready=True)}


def pending_forever(pod: dict) -> dict:
    """Scheduled, the model still downloading."""
    _scheduled(pod)
    inits = [{"name": c["name"], "image": c["image"], "ready": False, "restartCount": 0,
              "state": {"running": {"startedAt": now_rfc3339()}}} for c in pod["spec"]["initContainers"]]
    return {"phase": "Pending", "conditions": _conditions(False, initialized=False), "initContainerStatuses": inits,
            "containerStatuses": _main(pod, {"waiting": {"reason": "PodInitializing"}})}


def image_pull_failure(reason: str = "ImagePullBackOff") -> Callable[[dict], dict]:
    def fate(pod: dict) -> dict:
        _scheduled(pod)
        image = pod["spec"]["containers"][0]["image"]
        waiting = {"reason": reason, "message": f'Back-off pulling image "{image}"'}
        return {"phase": "Pending", "conditions": _conditions(False), "initContainerStatuses": _init_done(pod),
                "containerStatuses": _main(pod, {"waiting": waiting})}
    return fate


def crash_loop(exit_code: int = 1, message: str = "", reason: str = "Error") -> Callable[[dict], dict]:
    def fate(pod: dict) -> dict:
        _scheduled(pod)
        last = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                               "finishedAt": now_rfc3339()}}
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
        return {"phase": "Running", "podIP": f"10.0.1.{next(_ips) % 250}", "conditions": _conditions(False),
                "initContainerStatuses": _init_done(pod),
                "containerStatuses": _main(pod, {"waiting": waiting}, restarts=3, last=last)}
    return fate


def crashed_once(message: str = "ConnectionError: the feature store did not answer") -> Callable[[dict], dict]:
    """The model server exited once before it was ready (exit code 1, restart count 1): below
    the controller's crash limit, so the rollout goes on and the planner replaces the pod after
    its back-off (1 s). `finishedAt` is left out, so that back-off counts from when the
    controller saw the crash rather than from a time truncated to the second."""
    def fate(pod: dict) -> dict:
        _scheduled(pod)
        last = {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}
        waiting = {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}
        return {"phase": "Running", "podIP": f"10.0.1.{next(_ips) % 250}", "conditions": _conditions(False),
                "initContainerStatuses": _init_done(pod),
                "containerStatuses": _main(pod, {"waiting": waiting}, restarts=1, last=last)}
    return fate


def oom_killed() -> Callable[[dict], dict]:
    return crash_loop(exit_code=137, reason="OOMKilled")


def download_failure(message: str = "model download: sha256 mismatch") -> Callable[[dict], dict]:
    def fate(pod: dict) -> dict:
        _scheduled(pod)
        inits = [{"name": c["name"], "image": c["image"], "ready": False, "restartCount": 2,
                  "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                  "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                                               "finishedAt": now_rfc3339()}}}
                 for c in pod["spec"]["initContainers"]]
        return {"phase": "Pending", "conditions": _conditions(False, initialized=False),
                "initContainerStatuses": inits,
                "containerStatuses": _main(pod, {"waiting": {"reason": "PodInitializing"}})}
    return fate


def config_error(message: str = 'secret "model-credentials" not found') -> Callable[[dict], dict]:
    def fate(pod: dict) -> dict:
        _scheduled(pod)
        return {"phase": "Pending", "conditions": _conditions(False), "initContainerStatuses": _init_done(pod),
                "containerStatuses": _main(pod, {"waiting": {"reason": "CreateContainerConfigError",
                                                             "message": message}})}
    return fate


def unschedulable(message: str = "0/3 nodes are available: 3 Insufficient memory.") -> Callable[[dict], dict]:
    def fate(pod: dict) -> dict:
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                     "lastTransitionTime": now_rfc3339()}
        return {"phase": "Pending", "conditions": [condition]}
    return fate


def _rank(pod: dict) -> tuple:
    meta, status = pod["metadata"], pod.get("status") or {}
    cost = int((meta.get("annotations") or {}).get("controller.kubernetes.io/pod-deletion-cost", "0"))
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", "Pending"), 0)
    # The ReplicaSet controller's order: unscheduled, then by phase, not ready first; the
    # deletion cost only among pods alike in those; then the newest first.
    created = -datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")).timestamp()
    return bool(pod["spec"].get("nodeName")), phase, ready, cost, created, meta["name"]


class FakeCluster:
    def __init__(self, server: ApiServerEmulator, *, termination_delay_s: float = 0.05) -> None:
        self.server = server
        self.fate: Callable[[dict], dict] = running_ready
        self.replica_failure = ""  # e.g. a quota or Pod Security admission refusal
        self.termination_delay_s = termination_delay_s
        self.pods_created = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._placed: set[str] = set()
        self._terminating: set[str] = set()

    def start(self) -> None:
        self.server.listeners.append(lambda _res, _event, _obj: self._kick.set())
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._kick.set()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def pods(self, **labels) -> list[dict]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items()) or None
        return self.server.objects_of("pods", selector=selector)

    async def _run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            self.reconcile()
            await asyncio.sleep(0)

    def reconcile(self) -> None:
        for deployment in self.server.objects_of("deployments"):
            self._reconcile_deployment(deployment)
        for pod in self.server.objects_of("pods"):
            meta = pod["metadata"]
            if meta["uid"] not in self._placed and not meta.get("deletionTimestamp"):
                self._placed.add(meta["uid"])
                fate = self.fate

                def place(p, fate=fate):
                    p["status"] = fate(p)
                self.server.update(PODS, meta["namespace"], meta["name"], place)
            if meta.get("deletionTimestamp") and meta["uid"] not in self._terminating:
                self._terminating.add(meta["uid"])
                asyncio.get_running_loop().call_later(
                    self.termination_delay_s, self.server.finish_termination, PODS, meta["namespace"], meta["name"])

    def _reconcile_deployment(self, deployment: dict) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        owned = [p for p in self.server.objects_of("pods", meta["namespace"])
                 if any(r.get("uid") == meta["uid"] for r in p["metadata"].get("ownerReferences") or [])]
        active = sorted((p for p in owned if not p["metadata"].get("deletionTimestamp")), key=_rank)
        want = spec.get("replicas", 1)
        if len(active) < want and not self.replica_failure:
            for _ in range(want - len(active)):
                self._create_pod(deployment)
        for pod in active[: max(0, len(active) - want)]:
            self.server.delete(PODS, meta["namespace"], pod["metadata"]["name"])
        ready = sum(1 for p in active if any(c["type"] == "Ready" and c["status"] == "True"
                                             for c in (p.get("status") or {}).get("conditions") or []))
        status = {"observedGeneration": meta.get("generation", 1), "replicas": len(active),
                  "readyReplicas": ready, "availableReplicas": ready}
        if self.replica_failure:
            status["conditions"] = [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                     "message": self.replica_failure}]

        def set_status(d):
            d["status"] = status
        self.server.update(DEPLOYMENTS, meta["namespace"], meta["name"], set_status)

    def _create_pod(self, deployment: dict) -> None:
        meta, template = deployment["metadata"], deployment["spec"]["template"]
        self.pods_created += 1
        self.server.create(PODS, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{meta['name']}-{secrets.token_hex(3)[:5]}", "namespace": meta["namespace"],
                         "labels": dict(template["metadata"].get("labels") or {}),
                         "annotations": dict(template["metadata"].get("annotations") or {}),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        })
