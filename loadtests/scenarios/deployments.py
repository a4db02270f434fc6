"""Reading and changing a deployment through the admin API, for the acting scenarios.

A rollout needs "the same deployment, one thing changed": the admin API
shows a deployment with absolute paths and every setting, so the shown view
(minus what only the API adds) is a complete YAML body to apply again.
Snapshots reduce a view to the counts and ids a scenario's timeline needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..admin import live_replicas, ready_replicas

# What `apply` accepts of a shown deployment; the rest (state, replicas...) is the API's.
_SETTINGS = ("environment", "instance_type", "instance_count", "request_settings",
             "scale_settings", "liveness_probe", "readiness_probe")


def deployment_body(view: dict, set_env: dict[str, str]) -> dict:
    """An apply-able YAML body for the deployment shown in `view`, with env vars changed."""
    body: dict = {"name": view["name"], "endpoint_name": view["endpoint_name"],
                  "code_configuration": dict(view["code_configuration"])}
    if view.get("model"):
        body["model"] = {"path": view["model"]}
    for key in _SETTINGS:
        if view.get(key) not in (None, {}):
            body[key] = view[key]
    body["environment_variables"] = {**(view.get("environment_variables") or {}), **set_env}
    return body


def as_document(body: dict, source: str, base_dir: str) -> dict:
    return {"source": source, "base_dir": base_dir, "body": body}


def manifest_documents(paths: list[Path]) -> list[dict]:
    """Documents for POST /apply from YAML files (relative paths resolve next to each file)."""
    import yaml

    docs = []
    for path in paths:
        path = Path(path).resolve()
        for body in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if body:
                docs.append(as_document(body, str(path), str(path.parent)))
    if not docs:
        raise ValueError(f"no YAML document in {', '.join(map(str, paths))}")
    return docs


def snapshot(view: dict) -> dict:
    """Counts and ids of a deployment view: what changes during a scenario."""
    ready = ready_replicas(view)
    live = live_replicas(view)
    return {"state": view.get("provisioning_state"), "ready": len(ready), "live": len(live),
            "desired": view.get("desired_replicas", view.get("instance_count")),
            "ready_ids": sorted(r["replica_id"] for r in ready),
            "live_ids": sorted(r["replica_id"] for r in live),
            "ready_pids": sorted(int(r["pid"]) for r in ready if r.get("pid"))}


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def is_descendant(pid: int, ancestor: int, max_depth: int = 16) -> bool:
    """Whether `pid` runs below `ancestor` on this machine (never kill a stale pid)."""
    current: int | None = pid
    for _ in range(max_depth):
        current = parent_pid(current) if current else None
        if current is None or current <= 1:
            return False
        if current == ancestor:
            return True
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
