"""A local replica is its whole process group, not only the process scoregate started.

A custom model server is often started through a wrapper (`environment.command:
["bash", "start.sh"]`, a shell that sets things up and then runs the server without
`exec`). The server is then a grandchild of the gateway: stopping the replica (a
scale-down, a delete, a rollback, the gateway's shutdown) or killing it after failed
liveness probes must end the server too, or it keeps running with its port and its
memory after the replica is gone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.backends import EXITED, READY
from serving.backends.local import LocalProcessBackend
from serving.resources import Deployment, ProbeSettings
from tests.support.waiting import until

CUSTOM = Path(__file__).resolve().parents[1] / "fakes" / "models" / "custom"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by its new parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wrapped(name: str) -> Deployment:
    # `; exit $?` keeps bash from exec-ing the server: bash stays the replica's process
    # and the server runs as its child, as with a start script.
    return Deployment(
        name=name, endpoint_name="ep", code=str(CUSTOM),
        environment={"command": ["bash", "-c", "python3 server.py; exit $?"],
                     "inference_config": {"liveness_route": {"path": "/healthz"},
                                          "readiness_route": {"path": "/healthz"},
                                          "scoring_route": {"path": "/predict"}}},
        liveness_probe=ProbeSettings(period=0.2, timeout=0.5, failure_threshold=2))


async def _ready_server(backend: LocalProcessBackend, replica_id: str) -> int:
    view = lambda: next(v for v in backend.observe() if v.replica_id == replica_id)  # noqa: E731
    ready = await until(lambda: view().state == READY and view(), 30, "the replica to be ready")
    servers = await until(lambda: _children(ready.pid), 10, "the wrapper's child")
    return servers[0]


@pytest.fixture
async def backend(tmp_path):
    backend = LocalProcessBackend(tmp_path / "state", stop_grace_s=5)
    await backend.start()
    yield backend
    await backend.close()


async def _ended(server: int) -> None:
    """Wait for the wrapper's server to end; killed here if it does not (never left behind)."""
    try:
        await until(lambda: not _alive(server), 10, f"the model server (pid {server}) to end")
    finally:
        if _alive(server):
            os.kill(server, 9)


async def test_stopping_a_wrapped_replica_stops_the_server_it_started(backend):
    deployment = _wrapped("stopped")
    replica_id = await backend.start_replica(deployment, deployment.replica_spec_hash())
    server = await _ready_server(backend, replica_id)
    await backend.stop_replica(replica_id)
    await _ended(server)


async def test_closing_the_backend_stops_the_servers_of_wrapped_replicas(tmp_path):
    backend = LocalProcessBackend(tmp_path / "state", stop_grace_s=5)
    await backend.start()
    deployment = _wrapped("closed")
    try:
        replica_id = await backend.start_replica(deployment, deployment.replica_spec_hash())
        server = await _ready_server(backend, replica_id)
    finally:
        await backend.close()
    await _ended(server)


async def test_a_wrapped_replica_killed_for_failed_liveness_probes_takes_its_server_along(backend):
    deployment = _wrapped("unlive")
    replica_id = await backend.start_replica(deployment, deployment.replica_spec_hash())
    server = await _ready_server(backend, replica_id)
    try:
        # The server stops answering its liveness route: stop it (SIGSTOP), as a wedged
        # server would be; the probes time out and the replica is killed.
        os.kill(server, 19)
        view = lambda: next(v for v in backend.observe() if v.replica_id == replica_id)  # noqa: E731
        exited = await until(lambda: view().state == EXITED and view(), 60, "the replica to be killed")
        assert exited.failed_stage == "liveness"
        await until(lambda: not _alive(server), 10, f"the model server (pid {server}) to end")
    finally:
        if _alive(server):
            os.kill(server, 9)
            os.kill(server, 18)
