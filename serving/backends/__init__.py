"""Where replicas run: the Backend protocol shared by the local and Kubernetes backends.

The controller (serving.controller) only ever talks to a Backend: it asks it to start
or stop one replica and reads what it observes. Implementations report changes through
the `on_change` callback so the reconcile loop and the publisher wake up at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..resources import Deployment

STARTING, READY, STOPPING, EXITED = "starting", "ready", "stopping", "exited"


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
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    ended_at: float | None = None
    scheme: str = "http"


class Backend(Protocol):
    async def start(self) -> None: ...
    async def start_replica(self, deployment: Deployment, spec_hash: str, restarts: int = 0) -> str: ...
    async def stop_replica(self, replica_id: str) -> None: ...
    def forget(self, replica_id: str) -> None: ...
    def observe(self) -> list[ReplicaView]: ...
    def logs(self, endpoint: str, deployment: str, lines: int) -> str: ...
    async def close(self) -> None: ...
