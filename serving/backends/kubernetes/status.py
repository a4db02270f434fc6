"""DeploymentStatusReporter: what `kubectl get onlinedeployments` shows.

After changes (debounced), derives each custom resource's status from the store's
snapshot (problems: invalid spec, missing endpoint or instance type; an invalid object
the store still serves in its last valid version is Failed with its problem and that
version's specHash and replicas) and the backend's
replica views, and merge-patches the status subresource when it changed:
- OnlineDeployment: provisioningState (Creating, Updating, Succeeded, Failed), stage and
  reason (of the replica that failed, else of the one furthest behind), replicas,
  readyReplicas, desiredReplicas (the count the controller wants), specHash,
  observedGeneration, observedInstanceCount (the instanceCount the controller's last pass
  acted on: a new leader that finds another one in the spec knows it for an explicit
  scale nobody applied yet);
- OnlineEndpoint: provisioningState, reason, keysSecretName;
- both: lastValid, the version the store accepted last (last_valid.py: what a controller
  or router that starts while the object is invalid serves), replaced whole (a JSON patch,
  not merged) and written before the fields above; removed once it serves none.
When the rollout record kept in the status (`status.rollout`, written by the store for
serving/controller/rollouts.py) says the current version failed, that verdict wins (with
its stage and reason: budget exhausted, rolled back); otherwise "Failed" means a replica
of the current version failed, with the stage and reason of its pod.
"Succeeded": as many replicas of the current version are ready as the controller wants
(`Controller.wanted`: the autoscaler's count for an autoscaled deployment, not
`instanceCount`), none older or still starting. Routers send traffic from then on, and it
is the count at which the rollout manager makes an edit an update that keeps them serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ...resources import Deployment
from .. import EXITED, READY, STARTING, ReplicaView
from . import names
from . import last_valid
from .api import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, KubeApi, patch_status
from .watching import run_on_wake
from .podstatus import ENVIRONMENT, IMAGE_PULL, INIT, MODEL_DOWNLOAD, RUNNING, SCHEDULING
from .replicas import ROLLOUT_STAGE
from .store import KubernetesStore
from .translation import deployment_from_custom_resource, deployment_name_of

log = logging.getLogger("scoregate.kubernetes.status")
_STAGE_ORDER = [SCHEDULING, IMAGE_PULL, ENVIRONMENT, MODEL_DOWNLOAD, INIT, RUNNING]
VALIDATION = "validation"


def _split(reason: str) -> tuple[str, str]:
    stage, sep, text = reason.partition(": ")
    return (stage, text) if sep and stage in _STAGE_ORDER else ("", reason)


def _stage_and_reason(view: ReplicaView) -> tuple[str, str]:
    """The rollout's stage name (as serving/controller/rollout.py names them), the pod's reason."""
    pod_stage, _ = _split(view.reason)
    return ROLLOUT_STAGE.get(pod_stage, pod_stage), view.reason


def _instance_count(deployment: Deployment) -> int:
    return deployment.instance_count


def _not_known(_deployment: Deployment) -> int | None:
    return None


def deployment_status(obj: dict, problem: str | None, views: list[ReplicaView],
                      deployment: Deployment | None = None,
                      wanted: Callable[[Deployment], int] = _instance_count,
                      kept: Deployment | None = None,
                      acted_on: Callable[[Deployment], int | None] = _not_known) -> dict:
    """The status subresource of one OnlineDeployment (pure). `deployment`: as the store
    resolved it (its instance type's content is part of the version); else parsed from obj.
    `kept`: with a `problem`, the last valid version the store still serves (if any), whose
    replicas and specHash the status then shows.
    `wanted`: the replica count the controller runs it at (Controller.wanted); `acted_on`:
    the instance count its last pass acted on (Controller.acted_on_instance_count), shown
    as observedInstanceCount when known."""
    generation = (obj.get("metadata") or {}).get("generation", 0)
    previous = obj.get("status") or {}
    if problem and kept is None:
        return {"provisioningState": "Failed", "stage": VALIDATION, "reason": problem, "replicas": 0,
                "readyReplicas": 0, "desiredReplicas": 0, "specHash": previous.get("specHash", ""),
                "observedGeneration": generation}
    deployment = (kept if problem else deployment) or deployment_from_custom_resource(obj)
    spec_hash = deployment.replica_spec_hash()
    mine = [v for v in views if (v.endpoint, v.deployment) == (deployment.endpoint_name, deployment.name)]
    current = [v for v in mine if v.spec_hash == spec_hash]
    ready = sum(1 for v in current if v.state == READY)
    desired = wanted(deployment)
    status = {"replicas": sum(1 for v in current if v.state in (STARTING, READY, EXITED)),
              "readyReplicas": ready, "desiredReplicas": desired, "specHash": spec_hash,
              "observedGeneration": generation}
    if (count := acted_on(deployment)) is not None:
        status["observedInstanceCount"] = count
    if problem:  # refused; its last valid version is still served: its replicas
        return {**status, "provisioningState": "Failed", "stage": VALIDATION, "reason": problem}
    stale = [v for v in mine if v.spec_hash != spec_hash and v.state in (STARTING, READY)]
    failed = [v for v in current if v.state == EXITED]
    waiting = sorted((v for v in current if v.state == STARTING),
                     key=lambda v: _STAGE_ORDER.index(_split(v.reason)[0]) if _split(v.reason)[0] else 0)
    rollout = previous.get("rollout") or {}
    if rollout.get("spec_hash") == spec_hash and str(rollout.get("state", "")).lower() == "failed":
        # the rollout's own verdict (serving/controller/rollouts.py): budget, rollback, crash limit
        reason = rollout.get("reason", "") + ("; rolled back to the previous version" if rollout.get("rolled_back")
                                              else "")
        return {**status, "provisioningState": "Failed", "stage": rollout.get("failed_stage") or "", "reason": reason}
    if ready >= desired and not stale and not waiting:
        return {**status, "provisioningState": "Succeeded", "stage": "", "reason": ""}
    if failed:
        stage, reason = _stage_and_reason(failed[0])
        return {**status, "provisioningState": "Failed", "stage": stage, "reason": reason}
    updating = previous.get("specHash") not in (None, "", spec_hash) or previous.get("provisioningState") in (
        "Succeeded", "Updating")
    stage, reason = _stage_and_reason(waiting[0]) if waiting else ("", "")
    return {**status, "provisioningState": "Updating" if updating else "Creating", "stage": stage, "reason": reason}


def endpoint_status(obj: dict, problem: str | None, has_keys: bool) -> dict:
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if problem:
        return {"provisioningState": "Failed", "reason": problem, "observedGeneration": generation}
    if not has_keys:
        return {"provisioningState": "Creating", "reason": "creating the endpoint keys",
                "observedGeneration": generation}
    return {"provisioningState": "Succeeded", "reason": "", "observedGeneration": generation,
            "keysSecretName": names.keys_secret_name(obj["metadata"]["name"])}


class DeploymentStatusReporter:
    def __init__(self, api: KubeApi, store: KubernetesStore, observe: Callable[[], list[ReplicaView]], *,
                 wanted: Callable[[Deployment], int] = _instance_count,
                 acted_on: Callable[[Deployment], int | None] = _not_known, debounce_s: float = 0.1) -> None:
        """`wanted`: the count the controller runs a deployment at (Controller.wanted);
        `acted_on`: the instance count it last acted on (Controller.acted_on_instance_count)."""
        self._api, self._store, self._observe, self._wanted = api, store, observe, wanted
        self._acted_on = acted_on
        self._debounce_s = debounce_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.patches = 0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status reporter")
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        await run_on_wake(self._wake, self._debounce_s, self.report_once, "writing statuses", log)

    async def report_once(self) -> None:
        snapshot = self._store.snapshot
        views = self._observe()
        keyed = {name for name in (r.endpoint.name for r in snapshot.records)}
        for obj in self._store.custom_objects(ONLINE_ENDPOINTS):
            oid = ("OnlineEndpoint", obj["metadata"]["namespace"], obj["metadata"]["name"])
            # The record first: a status that says Succeeded is then never on the cluster
            # without the record of its version (a controller stopped between the two writes).
            await self._save_last_valid(ONLINE_ENDPOINTS, obj, snapshot.last_valid.get(oid))
            await self._patch(ONLINE_ENDPOINTS, obj, endpoint_status(obj, snapshot.problems.get(oid),
                                                                     obj["metadata"]["name"] in keyed))
        resolved = {(d.endpoint_name, d.name): d for d in snapshot.deployments}
        kept = snapshot.kept
        for obj in self._store.custom_objects(ONLINE_DEPLOYMENTS):
            meta = obj["metadata"]
            oid = ("OnlineDeployment", meta["namespace"], meta["name"])
            problem = snapshot.problems.get(oid)
            if problem is None and deployment_name_of(obj) and (
                    (obj.get("spec") or {}).get("endpointName"), deployment_name_of(obj)) not in snapshot.sources:
                problem = "waiting for its endpoint"
            key = ((obj.get("spec") or {}).get("endpointName"), deployment_name_of(obj))
            await self._save_last_valid(ONLINE_DEPLOYMENTS, obj, snapshot.last_valid.get(oid))
            await self._patch(ONLINE_DEPLOYMENTS, obj, deployment_status(obj, problem, views, resolved.get(key),
                                                                       self._wanted, kept.get(oid), self._acted_on))

    async def _patch(self, kind, obj: dict, status: dict) -> None:
        if await patch_status(self._api, kind, obj, status):
            self.patches += 1

    async def _save_last_valid(self, kind, obj: dict, version) -> None:
        if await last_valid.save(self._api, kind, obj, version):
            self.patches += 1
