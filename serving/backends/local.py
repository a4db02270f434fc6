"""Local backend: each replica is a child process on this machine.

A replica moves STARTING (phase init: process up, port closed → phase readiness: port
open, readiness probes running) → READY (liveness probes running) → STOPPING → gone,
or → EXITED when the process dies, a probe gives up, or it never became ready; the
controller then replaces it or fails the rollout. What each replica prints goes to
`STATE_DIR/logs/ENDPOINT/DEPLOYMENT/REPLICA.log`; the last lines of an exited one are
kept in its view for the rollout's failure reason and `deployment logs`.

No replica may outlive the gateway: children get PR_SET_PDEATHSIG (SIGTERM when the
gateway dies, even by SIGKILL) and their own session (a Ctrl-C in the terminal reaches
the gateway, which stops them in order), and close() stops every one of them.
A replica is its whole process group (its session's): what a wrapper it runs started
(`command: ["bash", "start.sh"]` and the server the script runs) is signalled with it,
and whatever is left of the group when the replica's process ends is killed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
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
from . import EXITED, INIT, READINESS, READY, STARTING, STOPPING, Artifacts, ReplicaView
from .launching import LaunchError, LaunchPlan, child_setup, plan_launch

log = logging.getLogger("scoregate.backend.local")

EXIT_INIT_FAILED = 3  # serving.modelserver's exit code when import or init() raised
EXIT_PORT_IN_USE = 4  # serving.modelserver could not bind its port
LOG_TAIL_LINES = 30
HURRIED_GRACE_S = 0.5  # after a second stop signal: SIGTERM, then SIGKILL this soon
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\w*)(: .*)?$")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def init_error(tail: tuple[str, ...]) -> str | None:
    """The exception a failed init() raised, from the replica's last lines of output."""
    for line in reversed(tail):
        match = _EXCEPTION_LINE.match(line.strip())
        if match:
            return line.strip()
    return None


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the replica's process group (its pid: it leads its own session), so that
    the processes it started get the signal too; its process alone if that fails."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # nothing of it is left
    except PermissionError:
        if process.returncode is None:
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass


@dataclass
class _Replica:
    replica_id: str
    deployment: Deployment
    spec_hash: str
    port: int
    log_path: Path
    restarts: int  # of its slot, carried over from the replica it replaced
    crash_streak: int
    started_at: float
    state: str = STARTING
    phase: str | None = INIT
    plan: LaunchPlan | None = None
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    reason: str = ""
    failed_stage: str | None = None
    log_tail: tuple[str, ...] = ()
    ended_at: float | None = None
    tasks: set = field(default_factory=set)

    def view(self, host: str, scheme: str) -> ReplicaView:
        plan = self.plan
        return ReplicaView(
            replica_id=self.replica_id, endpoint=self.deployment.endpoint_name,
            deployment=self.deployment.name, spec_hash=self.spec_hash, state=self.state,
            host=host, port=self.port, pid=self.process.pid if self.process else None,
            started_at=self.started_at, restarts=self.restarts, crash_streak=self.crash_streak,
            exit_code=self.exit_code, reason=self.reason, ended_at=self.ended_at, scheme=scheme,
            phase=self.phase if self.state == STARTING else None, failed_stage=self.failed_stage,
            log_tail=self.log_tail, scoring_path=plan.scoring_path if plan else "/score",
            liveness_path=plan.liveness_path if plan else "/")


class LocalProcessBackend:
    def __init__(
        self,
        state_dir: Path,
        *,
        on_change: Callable[[], None] = lambda: None,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        init_poll_s: float = 0.05,
        stop_grace_s: float = 10.0,
        drain: Callable[[str, float], Awaitable[bool]] | None = None,
        replica_tls=None,
    ) -> None:
        self._logs_dir = Path(state_dir) / "logs"
        self._tls_dir = Path(state_dir) / "tls" / "replicas"
        self._on_change = on_change
        self._host = host
        self._python = python
        self._init_poll_s = init_poll_s
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
        self._session = aiohttp.ClientSession(connector=connector)

    # -- commands ---------------------------------------------------------------------
    async def start_replica(self, deployment: Deployment, spec_hash: str, crash_streak: int = 0,
                            artifacts: Artifacts | None = None, *, restarts: int = 0) -> str:
        replica_id = f"{deployment.name}-{secrets.token_hex(3)}"
        log_dir = self._logs_dir / deployment.endpoint_name / deployment.name
        replica = _Replica(replica_id, deployment, spec_hash, _free_port(self._host),
                           log_dir / f"{replica_id}.log", restarts, crash_streak, time.time())
        self._replicas[replica_id] = replica
        try:
            replica.process = await self._spawn(replica, artifacts or Artifacts())
        except (OSError, LaunchError) as exc:
            self._mark_exited(replica, None, "environment", f"could not start the replica: {exc}")
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

    async def close(self, *, hurried: bool = False) -> None:
        # hurried: nobody waits for what the replicas are still computing
        grace_s = min(self._stop_grace_s, HURRIED_GRACE_S) if hurried else self._stop_grace_s
        for replica in self._replicas.values():
            if replica.state != EXITED:
                replica.state = STOPPING
        await asyncio.gather(*(self._terminate(r, grace_s) for r in list(self._replicas.values())),
                             return_exceptions=True)
        self._replicas.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- starting ---------------------------------------------------------------------
    async def _spawn(self, replica: _Replica, artifacts: Artifacts) -> asyncio.subprocess.Process:
        tls_args = None
        if self._replica_tls is not None:
            files = await asyncio.to_thread(self._replica_tls.issue, self._tls_dir / replica.replica_id)
            tls_args = ["--tls-cert", str(files.cert), "--tls-key", str(files.key),
                        "--tls-client-ca", str(files.ca)]
        replica.plan = plan_launch(replica.deployment, artifacts, host=self._host, port=replica.port,
                                   python=self._python, extra_port=_free_port(self._host), tls_args=tls_args)
        log_file = await asyncio.to_thread(self._open_log, replica.log_path)
        try:
            return await asyncio.create_subprocess_exec(
                *replica.plan.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                cwd=replica.plan.cwd or None, env=replica.plan.env, start_new_session=True,
                preexec_fn=child_setup(artifacts.instance_type))
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
        """init (port closed) → readiness probes → READY + liveness probes; then the exit."""
        process = replica.process
        assert process is not None and replica.plan is not None
        exited = asyncio.ensure_future(process.wait())
        deployment = replica.deployment
        given_up: tuple[str, str] | None = None
        try:
            while not exited.done() and not await self._port_open(replica.port):
                await asyncio.wait({exited}, timeout=self._init_poll_s)
            if not exited.done() and replica.state == STARTING:
                replica.phase = READINESS
                self._on_change()
                given_up = await self._probe_loop(replica, exited, deployment.readiness_probe,
                                                  replica.plan.readiness_path, READINESS)
                if given_up is None and not exited.done() and replica.state == STARTING:
                    replica.state, replica.phase = READY, None
                    log.info("replica %s ready on port %d", replica.replica_id, replica.port)
                    self._on_change()
                    given_up = await self._probe_loop(replica, exited, deployment.liveness_probe,
                                                      replica.plan.liveness_path, "liveness")
            if given_up is not None and not exited.done():
                _signal_group(process, signal.SIGKILL)
            code = await exited
        finally:
            if not exited.done():
                exited.cancel()
        # A wrapper that ended (crashed, or killed above) leaves no server of its own behind.
        _signal_group(process, signal.SIGKILL)
        if replica.state == STOPPING:
            return
        tail = await asyncio.to_thread(self._tail, replica.log_path)
        if given_up is not None:
            stage, reason = given_up
        elif code == EXIT_INIT_FAILED and replica.state == STARTING:  # after ready: the script's own exit
            error = init_error(tail)
            stage, reason = INIT, f"init() raised {error}" if error else "init() failed (see the deployment logs)"
        elif code == EXIT_PORT_IN_USE:
            stage, reason = INIT, "its port was taken before it could bind"
        else:
            stage = replica.phase if replica.state == STARTING else "running"
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            reason = f"the replica process {how}"
        replica.log_tail = tail
        self._mark_exited(replica, code, stage, reason)

    def _mark_exited(self, replica: _Replica, code: int | None, stage: str, reason: str) -> None:
        replica.exit_code, replica.failed_stage, replica.reason = code, stage, reason
        replica.ended_at = time.time()
        replica.state = EXITED
        log.warning("replica %s stopped in stage %s: %s; see %s", replica.replica_id, stage, reason,
                    replica.log_path)
        self._on_change()

    async def _probe_loop(self, replica: _Replica, exited: asyncio.Future, settings, path: str,
                          kind: str) -> tuple[str, str] | None:
        """Probe until `success_threshold` passes (readiness) or forever (liveness);
        (stage, reason) when `failure_threshold` consecutive probes failed."""
        if settings.initial_delay and kind == READINESS:
            await asyncio.wait({exited}, timeout=settings.initial_delay)
        successes = failures = 0
        last_error = ""
        while not exited.done() and replica.state in (STARTING, READY):
            ok, last_error = await self._probe(replica.port, path, settings.timeout)
            if ok:
                successes, failures = successes + 1, 0
                if kind == READINESS and successes >= settings.success_threshold:
                    return None
            else:
                successes, failures = 0, failures + 1
                if failures >= settings.failure_threshold:
                    return kind, f"{kind} probe failed {failures} times ({last_error})"
            await asyncio.wait({exited}, timeout=settings.period)
        return None

    async def _port_open(self, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self._host, port), 1.0)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    async def _probe(self, port: int, path: str, timeout_s: float) -> tuple[bool, str]:
        assert self._session is not None
        try:
            async with self._session.get(f"{self._scheme}://{self._host}:{port}{path}",
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                await response.read()
                return response.status == 200, f"GET {path} answered {response.status}"
        except asyncio.TimeoutError:
            return False, f"GET {path} timed out after {timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return False, f"GET {path} failed: {type(exc).__name__}"

    @staticmethod
    def _tail(path: Path) -> tuple[str, ...]:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, 2)
                handle.seek(max(0, handle.tell() - 16384))
                lines = handle.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return ()
        return tuple(lines[-LOG_TAIL_LINES:])

    async def _terminate(self, replica: _Replica, grace_s: float | None = None) -> None:
        process = replica.process
        if process is None or process.returncode is not None:
            return
        _signal_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._stop_grace_s if grace_s is None else grace_s)
        except asyncio.TimeoutError:
            pass
        _signal_group(process, signal.SIGKILL)  # after the grace, or what it left running
        await process.wait()
        for task in list(replica.tasks):
            if task is not asyncio.current_task():
                task.cancel()
