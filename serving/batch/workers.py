"""The gateway's side of a batch worker process (serving.batch.worker).

A worker is a child process in its own session with PR_SET_PDEATHSIG=SIGKILL, so none
outlives the gateway even when the gateway is killed with -9. A mini-batch that raises
leaves the worker usable; one that times out or kills the worker costs the worker
(it is SIGKILLed with its process group and a new one is started for the next try).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import workerlog

_PR_SET_PDEATHSIG = 1
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_LINE_LIMIT = 512 * 1024 * 1024  # one answer line holds a whole mini-batch's results


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class WorkerError(Exception):
    """A mini-batch did not succeed; `lost` says whether the worker died with it."""

    lost = False


class MiniBatchFailed(WorkerError):
    """run() raised or returned the wrong number of results; the worker lives on."""


class WorkerLost(WorkerError):
    """The worker crashed or timed out; it has been killed."""

    lost = True


class WorkerInitFailed(WorkerError):
    """The scoring script could not be imported, or init() raised or timed out."""

    lost = True


@dataclass(frozen=True)
class WorkerSpec:
    code: str
    scoring_script: str
    model_path: str | None = None
    environment_variables: dict[str, str] = field(default_factory=dict)
    logging_level: str = "info"


class Worker:
    def __init__(self, spec: WorkerSpec, log_path: Path, python: str = sys.executable) -> None:
        self.spec = spec
        self.log_path = log_path
        self._python = python
        self._process: asyncio.subprocess.Process | None = None
        self._log: workerlog.WorkerLog | None = None  # its stdout/stderr, capped (serving.batch.workerlog)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def start(self, timeout_s: float) -> None:
        spec = self.spec
        env = dict(os.environ)
        env.update(spec.environment_variables)
        env["PYTHONUNBUFFERED"] = "1"
        env["AZUREML_LOG_LEVEL"] = spec.logging_level
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        command = [self._python, "-m", "serving.batch.worker", "--code", spec.code,
                   "--scoring-script", spec.scoring_script, "--logging-level", spec.logging_level]
        if spec.model_path:
            env["AZUREML_MODEL_DIR"] = spec.model_path
            command += ["--model-dir", spec.model_path]
        self._log = workerlog.WorkerLog(self.log_path, workerlog.LIMIT_BYTES)
        log_fd = await self._log.open()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_fd,
                cwd=spec.code, env=env, start_new_session=True, preexec_fn=_die_with_parent,
                limit=_LINE_LIMIT)
        except OSError as exc:
            os.close(log_fd)
            await self._log.close(0)
            raise WorkerInitFailed(f"cannot start a worker process in the code folder {spec.code}:"
                                   f" {exc.strerror or exc}") from None
        os.close(log_fd)  # the worker has it: the pipe ends when the worker (and what it started) ends
        try:
            async with asyncio.timeout(timeout_s):
                message = await self._read()
        except TimeoutError:
            await self.kill()
            raise WorkerInitFailed(f"init() did not finish within {timeout_s:g} s") from None
        except WorkerLost as exc:
            raise WorkerInitFailed(f"init() failed: {exc}") from None
        if not message.get("ready"):
            await self.kill()
            raise WorkerInitFailed(str(message.get("error") or "init() failed"))

    async def score(self, request_id: int, kind: str, payloads: list[str], timeout_s: float) -> list[str]:
        """Results of run(mini_batch), one string per item."""
        assert self._process is not None and self._process.stdin is not None
        line = json.dumps({"id": request_id, "kind": kind, "items": payloads}).encode() + b"\n"
        try:
            async with asyncio.timeout(timeout_s):
                self._process.stdin.write(line)
                await self._process.stdin.drain()
                message = await self._read()
        except TimeoutError:
            await self.kill()
            raise WorkerLost(f"run() did not finish within the timeout of {timeout_s:g} s") from None
        except (ConnectionError, BrokenPipeError):
            raise await self._lost() from None
        if message.get("id") != request_id:
            await self.kill()
            raise WorkerLost(f"the worker answered request {message.get('id')} instead of {request_id}")
        if not message.get("ok"):
            raise MiniBatchFailed(str(message.get("error") or "run() failed"))
        return message["results"]

    async def _read(self) -> dict:
        assert self._process is not None and self._process.stdout is not None
        try:
            line = await self._process.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            await self.kill()
            raise WorkerLost("the worker's answer was too large") from None
        if not line:
            raise await self._lost()
        try:
            return json.loads(line)
        except ValueError:
            await self.kill()
            raise WorkerLost("the worker sent a malformed answer") from None

    async def _lost(self) -> WorkerLost:
        code = await self.kill()
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return WorkerLost(f"the worker process {how} (see the worker log)")

    async def kill(self) -> int | None:
        """SIGKILL the worker and its process group; its exit code (once its log is written)."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        code = await process.wait()
        await self._close_log()
        return code

    async def _close_log(self) -> None:
        if self._log is not None:
            await self._log.close()

    async def close(self, grace_s: float = 2.0) -> None:
        """Let the worker exit on its own (stdin closed), then kill it."""
        process = self._process
        if process is None or process.returncode is not None:
            await self._close_log()
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            await self.kill()
        await self._close_log()
