"""Local backend: each replica is a child process running serving.modelserver.

A replica moves starting → ready (its `GET /` answered 200) → stopping → gone, or
→ exited when the process dies on its own (the controller then replaces it). Output of
each replica goes to `STATE_DIR/logs/ENDPOINT/DEPLOYMENT/REPLICA.log`.

No replica may outlive the gateway: children get PR_SET_PDEATHSIG (SIGTERM when the
gateway dies, even by SIGKILL) and their own session (a Ctrl-C in the terminal reaches
the gateway, which stops them in order), and close() stops every one of them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp

from ..resources import Deployment
from . import EXITED, READY, STARTING, STOPPING, ReplicaView

log = logging.getLogger("scoregate.backend.local")

_PR_SET_PDEATHSIG = 1
EXIT_INIT_FAILED = 3  # serving.modelserver's exit code when import or init() raised
EXIT_PORT_IN_USE = 4  # serving.modelserver could not bind its port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class _Replica:
    replica_id: str
    deployment: Deployment
    spec_hash: str
    port: int
    log_path: Path
    restarts: int
    started_at: float
    state: str = STARTING
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    reason: str = ""
    ended_at: float | None = None
    tasks: set = field(default_factory=set)

    def view(self, host: str, scheme: str = "http") -> ReplicaView:
        return ReplicaView(
            replica_id=self.replica_id, endpoint=self.deployment.endpoint_name,
            deployment=self.deployment.name, spec_hash=self.spec_hash, state=self.state,
            host=host, port=self.port, pid=self.process.pid if self.process else None,
            started_at=self.started_at, restarts=self.restarts, exit_code=self.exit_code,
            reason=self.reason, ended_at=self.ended_at, scheme=scheme)


class LocalProcessBackend:
    def __init__(
        self,
        state_dir: Path,
        *,
        on_change: Callable[[], None] = lambda: None,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        startup_timeout_s: float = 1200.0,
        probe_interval_s: float = 0.1,
        stop_grace_s: float = 10.0,
        drain: Callable[[str, float], Awaitable[bool]] | None = None,
        replica_tls=None,
    ) -> None:
        self._logs_dir = Path(state_dir) / "logs"
        self._on_change = on_change
        self._host = host
        self._python = python
        self._startup_timeout_s = startup_timeout_s
        self._probe_interval_s = probe_interval_s
        self._stop_grace_s = stop_grace_s
        self._drain = drain
        # Router→replica mTLS (serving.replica_tls.ReplicaTLS): issues each replica's
        # server certificate; probes present the router's client certificate.
        self._replica_tls = replica_tls
        self._scheme = "https" if replica_tls is not None else "http"
        self._replicas: dict[str, _Replica] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            ssl=self._replica_tls.client_context if self._replica_tls is not None else True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2.0))

    # -- commands ---------------------------------------------------------------------
    async def start_replica(self, deployment: Deployment, spec_hash: str, restarts: int = 0) -> str:
        replica_id = f"{deployment.name}-{secrets.token_hex(3)}"
        log_dir = self._logs_dir / deployment.endpoint_name / deployment.name
        replica = _Replica(replica_id, deployment, spec_hash, _free_port(self._host),
                           log_dir / f"{replica_id}.log", restarts, time.time())
        self._replicas[replica_id] = replica
        try:
            replica.process = await self._spawn(replica)
        except OSError as exc:
            replica.state, replica.reason = EXITED, f"could not start the replica process: {exc}"
            replica.ended_at = time.time()
            self._on_change()
            return replica_id
        self._track(replica, self._run(replica))
        return replica_id

    async def stop_replica(self, replica_id: str) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None:
            return
        if replica.state != EXITED:
            was_ready = replica.state == READY
            replica.state = STOPPING
            self._on_change()  # out of the routing table before the process is told to stop
            if was_ready and self._drain is not None:
                # Let requests already sent to it finish (bounded by their own timeout).
                timeout_s = replica.deployment.request_settings.request_timeout_ms / 1000 + 1
                if not await self._drain(replica.replica_id, timeout_s):
                    log.warning("replica %s still had requests in flight after %.1fs; stopping it",
                                replica.replica_id, timeout_s)
            await self._terminate(replica)
        self._replicas.pop(replica_id, None)
        self._forget_tls(replica_id)
        self._on_change()

    def forget(self, replica_id: str) -> None:
        """Drop the record of an exited replica (its log file stays)."""
        replica = self._replicas.get(replica_id)
        if replica is not None and replica.state == EXITED:
            del self._replicas[replica_id]
            self._forget_tls(replica_id)

    def _forget_tls(self, replica_id: str) -> None:
        if self._replica_tls is not None:
            self._replica_tls.forget(replica_id)

    def observe(self) -> list[ReplicaView]:
        return [replica.view(self._host, self._scheme) for replica in self._replicas.values()]

    def logs(self, endpoint: str, deployment: str, lines: int = 100) -> str:
        """The last `lines` lines of the newest replica logs of a deployment."""
        folder = self._logs_dir / endpoint / deployment
        if not folder.is_dir():
            return ""
        files = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
        out: deque[str] = deque(maxlen=max(1, lines))
        for file in files[-4:]:
            with open(file, "r", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    out.append(f"[{file.stem}] {line.rstrip()}")
        return "\n".join(out)

    async def close(self) -> None:
        for replica in self._replicas.values():
            if replica.state != EXITED:
                replica.state = STOPPING
        await asyncio.gather(*(self._terminate(r) for r in list(self._replicas.values())),
                             return_exceptions=True)
        self._replicas.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- internals --------------------------------------------------------------------
    async def _spawn(self, replica: _Replica) -> asyncio.subprocess.Process:
        deployment = replica.deployment
        env = dict(os.environ)
        env.update(deployment.environment_variables)
        if deployment.model_path:
            env["AZUREML_MODEL_DIR"] = deployment.model_path
        env["PYTHONUNBUFFERED"] = "1"
        command = [self._python, "-m", "serving.modelserver", "--code", deployment.code or ".",
                   "--scoring-script", deployment.scoring_script or "score.py",
                   "--host", self._host, "--port", str(replica.port)]
        if deployment.model_path:
            command += ["--model-dir", deployment.model_path]
        if self._replica_tls is not None:
            folder = self._logs_dir.parent / "tls" / "replicas" / replica.replica_id
            files = await asyncio.to_thread(self._replica_tls.issue, folder)
            command += ["--tls-cert", str(files.cert), "--tls-key", str(files.key),
                        "--tls-client-ca", str(files.ca)]
        # Keep the project importable from the replica whatever its cwd is.
        project_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
        log_file = await asyncio.to_thread(self._open_log, replica.log_path)
        try:
            return await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                cwd=deployment.code or None, env=env, start_new_session=True,
                preexec_fn=_die_with_parent)
        finally:
            log_file.close()

    @staticmethod
    def _open_log(path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "ab")

    def _track(self, replica: _Replica, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        replica.tasks.add(task)
        task.add_done_callback(replica.tasks.discard)

    async def _run(self, replica: _Replica) -> None:
        """Probe until ready, then wait for the process to end."""
        process = replica.process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        deadline = time.monotonic() + self._startup_timeout_s
        url = f"{self._scheme}://{self._host}:{replica.port}/"
        try:
            while replica.state == STARTING and not exited.done():
                if time.monotonic() > deadline:
                    replica.reason = f"not ready within {self._startup_timeout_s:g} s"
                    process.kill()
                    break
                if await self._probe(url):
                    replica.state = READY
                    log.info("replica %s ready on port %d", replica.replica_id, replica.port)
                    self._on_change()
                    break
                await asyncio.wait({exited}, timeout=self._probe_interval_s)
            code = await exited
        finally:
            if not exited.done():
                exited.cancel()
        replica.exit_code = code
        replica.ended_at = time.time()
        if replica.state != STOPPING:
            if not replica.reason:
                replica.reason = {
                    EXIT_INIT_FAILED: "init() failed (see the deployment logs)",
                    EXIT_PORT_IN_USE: "its port was taken before it could bind",
                }.get(code, f"the replica process exited with code {code}")
            log.warning("replica %s exited (%s); see %s", replica.replica_id, replica.reason,
                        replica.log_path)
            replica.state = EXITED
            self._on_change()

    async def _probe(self, url: str) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(url) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def _terminate(self, replica: _Replica) -> None:
        process = replica.process
        if process is None or process.returncode is not None:
            return
        try:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self._stop_grace_s)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
        except ProcessLookupError:
            pass
        for task in list(replica.tasks):
            if task is not asyncio.current_task():
                task.cancel()
