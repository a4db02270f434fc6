"""How a local replica is started: the command line, its environment and its limits.

Three kinds of replica, chosen by the deployment's `environment`:
- scoregate's model server (the default): `python -m serving.modelserver`;
- `inference_server: azmlinfsrv`: Azure ML's inference server, same score.py
  (found as `$SCOREGATE_AZMLINFSRV`, else `azmlinfsrv` on PATH);
- `command: [...]`: any HTTP model server; it gets its port as `$PORT` and `{port}` in
  its arguments, and `inference_config` names its liveness/readiness/scoring paths.
The instance type's limits apply in the child before exec: memory caps the address
space (RLIMIT_AS), cpu pins the process to that many cores.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ..resources import Deployment, InstanceType, parse_cpu, parse_memory
from . import Artifacts

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    scoring_path: str = "/score"
    liveness_path: str = "/"
    readiness_path: str = "/"


class LaunchError(Exception):
    """The replica cannot be started as configured (a stage "environment" failure)."""


def azmlinfsrv_executable() -> str | None:
    return os.environ.get("SCOREGATE_AZMLINFSRV") or shutil.which("azmlinfsrv")


def plan_launch(deployment: Deployment, artifacts: Artifacts, *, host: str, port: int, python: str,
                extra_port: int, tls_args: list[str] | None = None) -> LaunchPlan:
    environment = deployment.environment
    env = dict(os.environ)
    env.update(deployment.environment_variables)
    env["PYTHONUNBUFFERED"] = "1"
    model_dir = artifacts.model_dir or deployment.model_path
    code_dir = artifacts.code_dir or deployment.code
    if model_dir:
        env["AZUREML_MODEL_DIR"] = model_dir
    routes = environment.get("inference_config") or {}
    paths = {name: (routes.get(name) or {}).get("path") for name in
             ("scoring_route", "liveness_route", "readiness_route")}

    if "command" in environment:
        env["PORT"] = str(port)
        argv = [part.replace("{port}", str(port)).replace("{host}", host) for part in environment["command"]]
        return LaunchPlan(argv, env, code_dir, paths["scoring_route"] or "/score",
                          paths["liveness_route"] or "/", paths["readiness_route"] or paths["liveness_route"] or "/")

    if environment.get("inference_server") == "azmlinfsrv":
        executable = azmlinfsrv_executable()
        if executable is None:
            raise LaunchError("azmlinfsrv was not found: install azureml-inference-server-http "
                              "or set SCOREGATE_AZMLINFSRV to its path")
        argv = [executable, "--entry_script", str(Path(code_dir or ".") / (deployment.scoring_script or "score.py")),
                "--port", str(port), "--health_port", str(extra_port)]
        if model_dir:
            argv += ["--model_dir", model_dir]
        env.setdefault("AZUREML_ENTRY_SCRIPT", deployment.scoring_script or "score.py")
        return LaunchPlan(argv, env, code_dir)

    argv = [python, "-m", "serving.modelserver", "--code", code_dir or ".",
            "--scoring-script", deployment.scoring_script or "score.py", "--host", host, "--port", str(port)]
    if model_dir:
        argv += ["--model-dir", model_dir]
    argv += tls_args or []
    # Keep the project importable from the replica whatever its working folder is.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, env.get("PYTHONPATH")) if p)
    return LaunchPlan(argv, env, code_dir)


def check_environment(deployment: Deployment, instance_type: InstanceType | None) -> None:
    """Fail fast, before any process starts, on what cannot work on this machine."""
    environment = deployment.environment
    if "command" in environment:
        program = environment["command"][0]
        if not (shutil.which(program) or (os.path.isabs(program) and os.access(program, os.X_OK))):
            raise LaunchError(f"environment.command: {program} is not an executable on this machine")
    elif environment.get("inference_server") == "azmlinfsrv" and azmlinfsrv_executable() is None:
        raise LaunchError("azmlinfsrv was not found: install azureml-inference-server-http "
                          "or set SCOREGATE_AZMLINFSRV to its path")
    if instance_type is not None and "cpu" in instance_type.requests:
        # Like a scheduler, judge by what the type requests; its limit is only a cap.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        wanted = parse_cpu(instance_type.requests["cpu"])
        if wanted > cores:
            raise LaunchError(f"instance type {instance_type.name} requests {wanted:g} CPUs, "
                              f"this machine has {cores}")


def child_setup(instance_type: InstanceType | None):
    """A preexec function: die with the gateway, then apply the instance type's limits."""
    memory = parse_memory(instance_type.limits["memory"]) if instance_type and "memory" in instance_type.limits else None
    cpus = None
    if instance_type and "cpu" in instance_type.limits and hasattr(os, "sched_getaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        cpus = set(allowed[: max(1, math.ceil(parse_cpu(instance_type.limits["cpu"])))])

    def setup() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def default_python() -> str:
    return sys.executable
