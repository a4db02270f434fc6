"""A real `scoregate serve` child process on loopback, with helpers to drive it.

Every gateway gets its own state dir and ports chosen by the OS (port 0), read back
from gateway.json. stop() asserts nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.statedir import GatewayInfo, StateDir

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("SCOREGATE_STATE_DIR", None)
    return env


def descendants(pid: int) -> set[int]:
    """PIDs of every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


class GatewayProcess:
    def __init__(self, state_dir: Path, paths: list[str] | tuple = (), extra_args: list[str] | tuple = (),
                 env: dict[str, str] | None = None) -> None:
        self.extra_env = dict(env or {})
        self.state = StateDir(Path(state_dir))
        self.paths = [str(p) for p in paths]
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.log_path = Path(state_dir).parent / f"{Path(state_dir).name}-serve.log"
        self._info: GatewayInfo | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> "GatewayProcess":
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", *self.paths, "--state-dir", str(self.state.root),
             "--port", "0", "--admin-port", "0", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**_env(), **self.extra_env},
            cwd=str(REPO))
        log.close()

        def started():
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            info = self.state.read_gateway()
            return info if info and info.pid == self.process.pid else None

        self._info = wait_for(started, timeout_s, "gateway.json")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 40.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"gateway did not stop within {timeout_s}s:\n{self.log()}")

    def kill_everything(self) -> None:
        """Teardown of last resort: SIGKILL the gateway and anything below it."""
        if self.process is None:
            return
        pids = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    # -- access ---------------------------------------------------------------------------
    @property
    def info(self) -> GatewayInfo:
        assert self._info is not None
        return self._info

    @property
    def scoring_url(self) -> str:
        return self.info.scoring_url

    def admin(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.info.admin_url}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.info.admin_token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of the samples called `name` on the admin /metrics whose labels include
        `labels`; None when there is none."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.admin("GET", "/metrics")
        assert status == 200, text
        values = [found.value for family in text_string_to_metric_families(text) for found in family.samples
                  if found.name == name and labels.items() <= found.labels.items()]
        return sum(values) if values else None

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "serving.cli", *args, "--state-dir", str(self.state.root)],
            capture_output=True, text=True, env=_env(), cwd=str(REPO), timeout=timeout_s)

    def cli_json(self, *args: str):
        done = self.cli(*args)
        assert done.returncode == 0, f"scoregate {' '.join(args)} failed ({done.returncode}): {done.stderr}"
        return json.loads(done.stdout)

    def keys(self, endpoint: str) -> tuple[str, str]:
        status, body = self.admin("GET", f"/api/v1/endpoints/{endpoint}/keys")
        assert status == 200, body
        return body["primaryKey"], body["secondaryKey"]

    def deployment(self, endpoint: str, name: str) -> dict:
        status, body = self.admin("GET", f"/api/v1/endpoints/{endpoint}/deployments/{name}")
        assert status == 200, body
        return body

    def wait_ready(self, endpoint: str, deployments: list[str], timeout_s: float = 30.0) -> None:
        for name in deployments:
            wait_for(lambda: self.deployment(endpoint, name)["provisioning_state"] == "Succeeded",
                     timeout_s, f"deployment {endpoint}/{name} to be ready")

    def replica_pids(self) -> set[int]:
        assert self.process is not None
        return descendants(self.process.pid)
