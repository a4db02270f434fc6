"""Child processes of the benchmark: pinned to a core, bounded in time, always stopped.

The comparison is only fair if the gateway and nginx each get the same one
core and the client side (generator, replica) the other, so every child is
started under `taskset -c CPU` (or with its affinity set, when taskset is
missing), and a replica the gateway started is moved, thread by thread, to
the client core.  Every wait has a deadline; stop() ends with SIGKILL.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

Cpus = int | Collection[int] | None  # one core, a set of cores, or not pinned


class BenchError(RuntimeError):
    """The benchmark cannot set up or measure something; the message says what."""


def cpu_set(cpu: Cpus) -> set[int] | None:
    """The cores of `cpu` (one core or several) as a set; None when not pinning."""
    if cpu is None:
        return None
    return {cpu} if isinstance(cpu, int) else set(cpu)


def cpu_list(cpu: Cpus) -> str:
    """taskset's spelling of the cores: "1" or "2,3"."""
    cores = cpu_set(cpu)
    return "-" if cores is None else ",".join(str(c) for c in sorted(cores))


def pinned(cmd: list[str], cpu: Cpus) -> list[str]:
    """`cmd` under `taskset -c cpu[,cpu...]` (unchanged when not pinning or without taskset)."""
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", cpu_list(cpu), *cmd]


def _affinity_preexec(cpu: Cpus):
    if cpu is None or shutil.which("taskset"):
        return None
    cores = cpu_set(cpu)
    return lambda: os.sched_setaffinity(0, cores)


def pin_process(pid: int, cpu: Cpus) -> None:
    """Move every thread of a running process to `cpu` (one core or several; threads
    created later inherit)."""
    cores = cpu_set(cpu)
    if cores is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, child: "Child | None" = None) -> None:
    """Until 127.0.0.1:port accepts a TCP connection; BenchError on timeout or child exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.exited:
            raise BenchError(f"{child.name} exited with {child.proc.returncode}: {child.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class Child:
    """A started child process with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log: Path, cpu: Cpus,
                 env: dict | None = None, cwd: str | None = None, capture: bool = False) -> None:
        self.name, self.log = name, log
        self._log_handle = open(log, "wb")
        self.proc = subprocess.Popen(
            pinned(cmd, cpu), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else self._log_handle,
            stderr=self._log_handle, env=env, cwd=cwd, preexec_fn=_affinity_preexec(cpu))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def read_line(self, timeout: float) -> str:
        """One line of a captured stdout, within `timeout`; '' if none came."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal, wait up to `timeout`, then SIGKILL; returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log_handle.close()
        return self.proc.returncode


def end_leftovers(marker: str, timeout: float = 10.0) -> list[int]:
    """End the processes whose command line still names `marker` (a work dir of ours) once
    the gateway that started them is stopped: a child it forked and had not yet turned into
    its replica (a fork under valgrind takes a while to exec) keeps the gateway's command
    line. SIGTERM, then SIGKILL at the deadline; returns their pids."""
    needle = marker.encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if needle in handle.read() and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_running(pid) for pid in found):
            time.sleep(0.05)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (one whose reaper is slow is as good as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start_fastserver(log_dir: Path, cpu: int | None) -> tuple[Child, int]:
    """loadtests.fastserver on a free port; (child, port)."""
    child = Child("fastserver", [sys.executable, "-m", "loadtests.fastserver", "--port", "0"],
                  log_dir / "fastserver.log", cpu, env=child_env(), capture=True)
    line = child.read_line(30.0)
    if not line.startswith("PORT "):
        child.stop()
        raise BenchError(f"the fast server did not start: {line or child.tail()}")
    return child, int(line.split()[1])


def child_env() -> dict:
    """The environment for children, with this checkout importable."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("SCOREGATE_STATE_DIR", None)
    return env

