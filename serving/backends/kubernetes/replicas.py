"""Versions and pods → ReplicaViews: how the Backend protocol's replicas map to pods (pure).

A *version* is one apps/v1 Deployment (one spec hash of a scoregate deployment) and its
*target*, the replica count the controller asked for. Its pods are what exists. The
planner must see exactly `target` live replicas per version, neither more nor less, even
in the moments between a write and the watch events that follow it:

- more active pods than the target: the ReplicaSet controller is about to remove some; the
  ones it removes first (unscheduled, pending, not ready; among pods alike in those, the
  ones marked for stopping, then the newest — its own order) are reported STOPPING;
- fewer: one STARTING placeholder per missing pod (replica id `NS/VERSION#pending-N`);
- the rest: one view per pod, its state, stage and reason from podstatus.assess_pod.
backend.py keeps the versions and calls replica_views() from observe().
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .. import EXITED, STARTING, STOPPING, ReplicaView
from . import names
from .podstatus import ENVIRONMENT, IMAGE_PULL, INIT, MODEL_DOWNLOAD, SCHEDULING, assess_pod, parse_time
from .workloads import MODEL_SERVER_PORT

PLACEHOLDER_MARK = "#pending-"
_VIEW_FIELDS = {f.name for f in fields(ReplicaView)}
# Pod stages → the rollout's stage names (serving/controller/rollout.py): on a cluster,
# scheduling and image pull are how the environment gets prepared.
ROLLOUT_STAGE = {SCHEDULING: "environment", IMAGE_PULL: "environment", ENVIRONMENT: "environment",
                 MODEL_DOWNLOAD: "model_download", INIT: "init"}


def make_view(**values) -> ReplicaView:
    """A ReplicaView with the optional fields this version of the protocol has."""
    return ReplicaView(**{k: v for k, v in values.items() if k in _VIEW_FIELDS})


@dataclass
class Version:
    """One apps/v1 Deployment the backend manages, and the replica count it wants."""

    namespace: str
    name: str
    endpoint: str
    deployment: str
    spec_hash: str
    target: int
    manifest: dict | None = None  # rendered by start_replica; needed to (re)create the Deployment
    service: dict | None = None
    instance_type: str = ""
    restarts: int = 0  # carried over replacements so the planner's back-off keeps growing
    created_at: float = 0.0
    error: str = ""  # the last API error while writing this version out
    refused: str = ""  # the API server refused its objects (writing.py): its missing replicas failed
    draining: set[str] = field(default_factory=set)  # pods to mark before the next scale-down
    forgotten: set[str] = field(default_factory=set)  # exited pods to delete after the next write

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


def pod_uid(pod: dict) -> str:
    return (pod.get("metadata") or {}).get("uid") or (pod.get("metadata") or {}).get("name", "")


def pod_ready(pod: dict) -> bool:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def pod_port(pod: dict) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http":
                return int(port.get("containerPort", MODEL_SERVER_PORT))
    return MODEL_SERVER_PORT


def version_key_of_pod(pod: dict) -> tuple[str, str] | None:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        return meta.get("namespace", ""), names.version_name(
            labels[names.LABEL_ENDPOINT], labels[names.LABEL_DEPLOYMENT], labels[names.LABEL_SPEC_HASH])
    except KeyError:
        return None


def removal_rank(version: Version, pod: dict) -> tuple:
    """Ascending: the pod the ReplicaSet controller removes first comes first. Its order:
    a pod on no node, then Pending before Unknown before Running, not ready before ready;
    only among pods alike in those the deletion cost (a pod the planner stops has the
    lowest), then the newest first."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    try:
        cost = int((meta.get("annotations") or {}).get(names.ANNOTATION_DELETION_COST, "0"))
    except ValueError:
        cost = 0
    if meta.get("name") in version.draining:
        cost = min(cost, int(names.STOP_DELETION_COST))
    phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(status.get("phase", "Pending"), 0)
    return (bool((pod.get("spec") or {}).get("nodeName")), phase, pod_ready(pod), cost,
            -(parse_time(meta.get("creationTimestamp")) or 0.0))


@dataclass
class ObservationMemory:
    """What the views remember between calls: pods seen ready, when failures were seen."""

    ever_ready: set[str] = field(default_factory=set)
    failed_since: dict[str, float] = field(default_factory=dict)
    log_tails: dict[str, tuple[str, ...]] = field(default_factory=dict)


def replica_views(version: Version, pods: list[dict], hidden: set[str], memory: ObservationMemory,
                  now: float, replica_failure: str = "") -> list[ReplicaView]:
    """The views of one version; `replica_failure` is the Deployment's ReplicaFailure message."""
    pods = [p for p in pods if pod_uid(p) not in hidden]
    terminating = [p for p in pods if (p.get("metadata") or {}).get("deletionTimestamp")]
    active = sorted((p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")),
                    key=lambda p: removal_rank(version, p))
    surplus = max(0, len(active) - version.target)
    views = [_pod_view(version, p, STOPPING, "", memory, now) for p in terminating + active[:surplus]]
    for pod in active[surplus:]:
        views.append(_assessed_view(version, pod, memory, now))
    for index in range(max(0, version.target - len(active))):
        views.append(_placeholder(version, index, memory, now, replica_failure))
    return views


def _pod_view(version: Version, pod: dict, state: str, reason: str, memory: ObservationMemory, now: float,
              restarts: int = 0, ended_at: float | None = None, stage: str = "") -> ReplicaView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = failed_stage = None
    if state == STARTING and stage == INIT:
        phase = "init"
    elif state == EXITED:
        failed_stage = ROLLOUT_STAGE.get(stage, "running")
    return make_view(
        replica_id=f"{meta.get('namespace', '')}/{meta.get('name', '')}", endpoint=version.endpoint,
        deployment=version.deployment, spec_hash=version.spec_hash, state=state,
        host=status.get("podIP") or "", port=pod_port(pod), pid=None,
        started_at=parse_time(meta.get("creationTimestamp")) or now,
        restarts=max(restarts, version.restarts), reason=reason, ended_at=ended_at, phase=phase,
        failed_stage=failed_stage, log_tail=memory.log_tails.get(pod_uid(pod), ()) if state == EXITED else ())


def _assessed_view(version: Version, pod: dict, memory: ObservationMemory, now: float) -> ReplicaView:
    uid = pod_uid(pod)
    if pod_ready(pod):
        memory.ever_ready.add(uid)
    verdict = assess_pod(pod, instance_type=version.instance_type, ever_ready=uid in memory.ever_ready)
    ended_at = None
    if verdict.state == EXITED:
        ended_at = verdict.finished_at or memory.failed_since.setdefault(uid, now)
    else:
        memory.failed_since.pop(uid, None)
    return _pod_view(version, pod, verdict.state, verdict.text, memory, now, verdict.restarts, ended_at,
                     verdict.stage)


def _placeholder(version: Version, index: int, memory: ObservationMemory, now: float,
                 replica_failure: str) -> ReplicaView:
    slot = f"{version.namespace}/{version.name}{PLACEHOLDER_MARK}{index}"
    state, reason, ended_at = STARTING, f"{SCHEDULING}: waiting for the pod to be created", None
    if replica_failure:
        state, reason = EXITED, f"{SCHEDULING}: the pod cannot be created: {replica_failure}"
        ended_at = memory.failed_since.setdefault(slot, now)
    elif version.refused:  # writing it again cannot help: a stage that cannot succeed
        state, reason = EXITED, f"{ENVIRONMENT}: {version.refused}"
        ended_at = memory.failed_since.setdefault(slot, now)
    elif version.error:
        reason = f"{SCHEDULING}: waiting for the Kubernetes API: {version.error}"
    if state != EXITED:
        memory.failed_since.pop(slot, None)
    return make_view(replica_id=slot, endpoint=version.endpoint, deployment=version.deployment,
                     spec_hash=version.spec_hash, state=state, host="", port=0, pid=None,
                     started_at=version.created_at or now, restarts=version.restarts, reason=reason,
                     ended_at=ended_at, failed_stage="environment" if state == EXITED else None)
