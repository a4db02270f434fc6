"""Pod status → replica state, stage and a reason a person can act on (pure).

Kubernetes tells the story of a pod in its conditions and container statuses; the
rollout needs one verdict per pod: still starting (and in which stage), ready, or failed
(with the stage that failed and why), so that a rollout fails fast instead of waiting out
its budget. backend.py turns each verdict into a ReplicaView. The stages, in order:
scheduling → image pull → environment → model download → init → ready (→ running).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .. import EXITED, READY, STARTING, STOPPING

SCHEDULING, IMAGE_PULL, ENVIRONMENT = "scheduling", "image pull", "environment"
MODEL_DOWNLOAD, INIT, RUNNING, STOPPING_STAGE = "model download", "init", "running", "stopping"

IMAGE_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                     "RegistryUnavailable"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError",
                 "PostStartHookError", "PreStartHookError"}
EXIT_INIT_FAILED = 3  # serving.modelserver's exit code when importing score.py or init() failed


@dataclass(frozen=True)
class PodVerdict:
    state: str
    stage: str
    reason: str = ""
    restarts: int = 0
    finished_at: float | None = None  # when the failure happened, if the pod says

    @property
    def text(self) -> str:
        """The reason with its stage, as ReplicaView.reason carries it."""
        return f"{self.stage}: {self.reason}" if self.reason else ""


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _last_line(message: str | None, limit: int = 300) -> str:
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _condition(pod: dict, kind: str) -> dict | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _memory_limit(pod: dict, container_name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get("initContainers", []):
        if container.get("name") == container_name:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def _waiting_failure(status: dict, stage_if_config: str) -> PodVerdict | None:
    waiting = (status.get("state") or {}).get("waiting") or {}
    reason, message = waiting.get("reason", ""), _last_line(waiting.get("message"))
    restarts = status.get("restartCount", 0)
    if reason in IMAGE_PULL_ERRORS:
        return PodVerdict(EXITED, IMAGE_PULL, f"cannot pull image {status.get('image', '?')}: {reason}"
                          + (f": {message}" if message else ""), restarts)
    if reason in CONFIG_ERRORS:
        return PodVerdict(EXITED, stage_if_config, f"{reason}: {message or 'the container cannot be created'}",
                          restarts)
    return None


def _terminated(status: dict) -> dict | None:
    """The termination that ended the container, if it is not running now."""
    state = status.get("state") or {}
    if state.get("terminated"):
        return state["terminated"]
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff":
        return (status.get("lastState") or {}).get("terminated") or {"exitCode": None}
    return None


def _init_verdict(pod: dict, status: dict) -> PodVerdict | None:
    failure = _waiting_failure(status, ENVIRONMENT)
    if failure:
        return failure
    restarts = status.get("restartCount", 0)
    ended = _terminated(status)
    if ended and not (ended.get("exitCode") == 0 and ended.get("reason") == "Completed"):
        if ended.get("reason") == "OOMKilled":
            limit = _memory_limit(pod, status.get("name", ""))
            detail = f"out of memory (OOMKilled) with a limit of {limit}" if limit else "out of memory (OOMKilled)"
        else:
            code = ended.get("exitCode")
            detail = "failed" + (f" with exit code {code}" if code is not None else "")
            if _last_line(ended.get("message")):
                detail += f": {_last_line(ended.get('message'))}"
        return PodVerdict(EXITED, MODEL_DOWNLOAD, f"downloading the model and code {detail}", restarts,
                          parse_time(ended.get("finishedAt")))
    if (status.get("state") or {}).get("running"):
        return PodVerdict(STARTING, MODEL_DOWNLOAD, "downloading the model and code", restarts)
    if not status.get("ready") and not ended:
        return PodVerdict(STARTING, IMAGE_PULL, f"pulling image {status.get('image', '?')}", restarts)
    return None  # completed: on to the model server


def _main_verdict(pod: dict, status: dict, instance_type: str, ever_ready: bool) -> PodVerdict:
    failure = _waiting_failure(status, ENVIRONMENT)
    if failure:
        return failure
    restarts = status.get("restartCount", 0)
    ended = _terminated(status)
    stage = RUNNING if ever_ready else INIT
    if ended:
        if ended.get("reason") == "OOMKilled":
            limit = _memory_limit(pod, status.get("name", ""))
            of_type = f"instance type '{instance_type}'" if instance_type else "its instance type"
            detail = (f"out of memory (OOMKilled): the model needs more than the {limit} of memory that"
                      f" {of_type} allows" if limit else "out of memory (OOMKilled)")
        else:
            code = ended.get("exitCode")
            detail = "the model server exited" + (f" with code {code}" if code is not None else "")
            if code == EXIT_INIT_FAILED:
                stage, detail = INIT, "init() or the import of the scoring script failed (exit code 3)"
            message = _last_line(ended.get("message"))
            if message:
                detail += f": {message}"
        return PodVerdict(EXITED, stage, detail, restarts, parse_time(ended.get("finishedAt")))
    if (status.get("state") or {}).get("running"):
        if status.get("ready"):
            return PodVerdict(READY, RUNNING, "", restarts)
        if ever_ready:
            return PodVerdict(STARTING, RUNNING, "the readiness probe is failing", restarts)
        return PodVerdict(STARTING, INIT, "waiting for init() and the readiness probe", restarts)
    return PodVerdict(STARTING, IMAGE_PULL, f"pulling image {status.get('image', '?')}", restarts)


def assess_pod(pod: dict, *, instance_type: str = "", ever_ready: bool = False) -> PodVerdict:
    """The verdict on one pod; `ever_ready` says whether it was seen ready before."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return PodVerdict(STOPPING, STOPPING_STAGE, "")
    phase = status.get("phase", "Pending")
    if phase in ("Failed", "Succeeded"):
        why = status.get("reason") or ("the pod ended" if phase == "Succeeded" else "the pod failed")
        message = _last_line(status.get("message"))
        return PodVerdict(EXITED, RUNNING if ever_ready else INIT, why + (f": {message}" if message else ""))
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        of_type = f"instance type '{instance_type}'" if instance_type else "its instance type"
        return PodVerdict(EXITED, SCHEDULING, f"no node has the resources or labels that {of_type} asks for: "
                          + (_last_line(scheduled.get("message")) or "Unschedulable"))
    if not (pod.get("spec") or {}).get("nodeName") and not status.get("containerStatuses"):
        return PodVerdict(STARTING, SCHEDULING, "waiting for a node")
    for init_status in status.get("initContainerStatuses") or []:
        verdict = _init_verdict(pod, init_status)
        if verdict is not None:
            return verdict
    statuses = status.get("containerStatuses") or []
    if not statuses:
        return PodVerdict(STARTING, IMAGE_PULL, "creating the containers")
    verdicts = [_main_verdict(pod, s, instance_type, ever_ready) for s in statuses]
    for verdict in verdicts:
        if verdict.state != READY:
            return verdict
    return verdicts[0]
