"""Where replicas run: the Backend protocol shared by the local and Kubernetes backends.

The controller (serving.controller) only ever talks to a Backend: it asks it to start
or stop one replica and reads what it observes. Implementations report changes through
the `on_change` callback so the reconcile loop and the publisher wake up at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..resources import Deployment, InstanceType

STARTING, READY, STOPPING, EXITED = "starting", "ready", "stopping", "exited"
# Phases of a STARTING replica, which are also rollout stages.
INIT, READINESS = "init", "readiness"


@dataclass(frozen=True)
class Artifacts:
    """What the rollout prepared for a deployment version: where its model and code are
    on this machine, and its resolved instance type."""

    model_dir: str | None = None
    code_dir: str | None = None
    instance_type: InstanceType | None = None


@dataclass(frozen=True)
class ReplicaView:
    """What the backend observes of one replica, at one moment."""

    replica_id: str
    endpoint: str
    deployment: str
    spec_hash: str
    state: str
    host: str
    port: int
    pid: int | None
    started_at: float
    # Times this replica's slot was started again since its first start, whatever the
    # run before lasted: a pod's restartCount, and what `restarts` shows everywhere.
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    ended_at: float | None = None
    scheme: str = "http"
    phase: str | None = None  # INIT or READINESS while STARTING
    failed_stage: str | None = None  # for EXITED: init, readiness, liveness or running
    log_tail: tuple[str, ...] = ()  # for EXITED: the last lines it printed
    scoring_path: str = "/score"
    liveness_path: str = "/"
    # Quick failures in a row before this start: drives the restart back-off and the
    # rollout's crash limit, and starts again at 0 after a healthy run. None: the backend
    # keeps no streak of its own (a cluster's pods), so `restarts` is used.
    crash_streak: int | None = None


class Backend(Protocol):
    """start_replica's `crash_streak`: the streak the new replica carries on; `restarts`:
    its slot's count, which a backend of new processes carries on (a cluster's pods count
    their own restartCount and ignore it)."""

    async def start(self) -> None: ...
    async def start_replica(self, deployment: Deployment, spec_hash: str, crash_streak: int = 0,
                            artifacts: Artifacts | None = None, *, restarts: int = 0) -> str: ...
    async def stop_replica(self, replica_id: str) -> None: ...
    def forget(self, replica_id: str) -> None: ...
    def observe(self) -> list[ReplicaView]: ...
    def logs(self, endpoint: str, deployment: str, lines: int) -> str: ...
    async def close(self, *, hurried: bool = False) -> None:
        """Stop (or, on a cluster, leave) what runs. `hurried`: a second stop signal — the
        requests in flight were abandoned, so replicas get no time to finish them."""
        ...
