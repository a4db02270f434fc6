"""The scoregate under test: `scoregate serve` as a child, on a temp state dir.

The replica is one of two (`--replica`): `fastserver` (default) — loadtests'
trivial raw-protocol server, started by the gateway through the deployment's
`environment.command` like any custom model server, so that the replica is
never what limits a proxy; or `modelserver` — scoregate's own model server
with a scoring script whose run() returns a constant, the cheapest real model.
"direct" is that same replica: direct, gateway and nginx all reach one replica
process.  Admission limits are set high
(the benchmark measures the data path, not the queue), key auth is on, and
TLS uses the state dir's development certificate, which nginx reuses.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..admin import Gateway, GatewayError, ready_replicas
from .procs import BenchError, Child, Cpus, child_env, pin_process

ENDPOINT, DEPLOYMENT = "bench", "fast"
SCORE_PY = '''"""Benchmark model: the cheapest possible run(), so only the path to it is measured."""


def init():
    pass


def run(raw_data):
    return {"result": [0.5]}
'''
REQUEST_SETTINGS = {"request_timeout_ms": 10_000, "max_concurrent_requests_per_instance": 1024,
                    "max_queue_wait_ms": 1_000}
# The gateway runs pinned to one core, so the replica's instance type may ask for one
# (the default asks for two); the benchmark moves the replica to the client core anyway.
INSTANCE_TYPE = {"kind": "InstanceType", "name": "bench-one-core",
                 "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}


REPLICAS = ("fastserver", "modelserver")


def write_manifests(folder: Path, replica: str = "fastserver") -> Path:
    """The bench endpoint + deployment YAML (and the model) under `folder`."""
    model = folder / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "score.py").write_text(SCORE_PY)
    yml = folder / "yaml"
    yml.mkdir(exist_ok=True)
    (yml / "instance-type.yml").write_text(yaml.safe_dump(INSTANCE_TYPE, sort_keys=False))
    (yml / "endpoint.yml").write_text(yaml.safe_dump(
        {"name": ENDPOINT, "auth_mode": "key", "traffic": {DEPLOYMENT: 100}}, sort_keys=False))
    deployment = {"name": DEPLOYMENT, "endpoint_name": ENDPOINT, "instance_count": 1,
                  "instance_type": INSTANCE_TYPE["name"],
                  "code_configuration": {"code": str(model), "scoring_script": "score.py"},
                  "request_settings": REQUEST_SETTINGS}
    if replica == "fastserver":
        deployment["environment"] = {"command": [sys.executable, "-m", "loadtests.fastserver",
                                                 "--port", "{port}"]}
    elif replica != "modelserver":
        raise ValueError(f"replica must be one of {REPLICAS}")
    (yml / "deployment.yml").write_text(yaml.safe_dump(deployment, sort_keys=False))
    return yml


def serve_command() -> list[str]:
    """`scoregate` of this interpreter's environment, so that the gateway runs on the
    interpreter measuring it (not whichever `scoregate` PATH finds first: the interpreter's
    build alone moves CPU per request by ~10 %, docs/performance.md)."""
    exe = Path(sys.executable).parent / "scoregate"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "serving.cli"]


def gateway_interpreter(pid: int) -> str:
    """The binary the gateway process runs (the interpreter, symlinks resolved)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return "unknown"


@dataclass
class RunningGateway:
    child: Child
    gateway: Gateway
    scoring_url: str
    key: str
    replica_port: int
    replica_pid: int
    cert: str
    cert_key: str

    def stop(self) -> int | None:
        return self.child.stop(timeout=40.0)


def start_gateway(workdir: Path, gateway_cpu: Cpus, replica_cpu: Cpus,
                  timeout: float = 60.0, replica: str = "fastserver",
                  extra_args: tuple[str, ...] = (), wrapper: tuple[str, ...] = ()) -> RunningGateway:
    """Start, wait until the replica is ready, pin it; BenchError if it cannot.
    `extra_args` go to `scoregate serve` (e.g. ("--workers", "2")); `wrapper` runs the
    gateway's Python under another program (e.g. valgrind), which must exec it in place."""
    yml = write_manifests(workdir, replica)
    state = workdir / "state"
    command = [*wrapper, sys.executable, "-m", "serving.cli"] if wrapper else serve_command()
    child = Child("scoregate", [*command, "serve", str(yml), "--state-dir", str(state),
                                "--port", "0", "--admin-port", "0", *extra_args],
                  workdir / "scoregate.log", gateway_cpu, env=child_env(), cwd=str(workdir))
    try:
        return _wait_ready(child, state, replica_cpu, time.monotonic() + timeout)
    except BaseException:
        child.stop(timeout=10.0)
        raise


def _wait_ready(child: Child, state: Path, replica_cpu: Cpus,
                deadline: float) -> RunningGateway:
    gateway = None
    while time.monotonic() < deadline:
        if child.exited:
            raise BenchError(f"scoregate serve exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            found = Gateway.from_state_dir(state)
            if found.pid == child.pid:  # taskset execs, so the pid is the gateway's
                gateway = found
                view = gateway.deployment(ENDPOINT, DEPLOYMENT)
                ready = ready_replicas(view)
                if ready:
                    break
                if view.get("provisioning_state") == "Failed":
                    why = (view.get("rollout") or {}).get("reason") or "see its log"
                    raise BenchError(f"the benchmark deployment failed: {why}")
        except GatewayError:
            pass
        time.sleep(0.1)
    else:
        raise BenchError(f"scoregate was not ready within the deadline:\n{child.tail()}")
    replica = ready[0]
    pin_process(int(replica["pid"]), replica_cpu)
    endpoint = gateway.endpoint(ENDPOINT)
    tls = state / "tls"
    return RunningGateway(child, gateway, endpoint["scoring_uri"],
                          gateway.keys(ENDPOINT)["primaryKey"], int(replica["port"]),
                          int(replica["pid"]), str(tls / "server.pem"), str(tls / "server-key.pem"))
