"""The status snapshot: one JSON-able dict of what the gateway runs and how it is doing.

Built from the same views the admin API serves (serving.views, the batch views), so
the status page, `GET /api/v1/status` and `scoregate top` show what `endpoint show` /
`deployment show` would, plus live figures from LiveSeries. `assemble()` is pure (view
dicts in, snapshot out) and is shared by the in-process builder below and by
serving.status.remote, which gets the same views over the admin API. Nothing secret is
copied: no keys, no environment variables, no server paths of models or code.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from .live import LiveSeries, sample_registry

SNAPSHOT_VERSION = 1
FIGURES_WINDOW_S = 10.0
MAX_JOBS_PER_ENDPOINT = 20
MAX_JOBS = 50


def _health(replica: dict, ejected: set[str]) -> str:
    state = replica.get("state", "")
    if state == "ready":
        return "ejected" if replica.get("replica_id") in ejected else "healthy"
    return state or "unknown"


def replica_status(replica: dict, now: float, ejected: set[str],
                   in_flight_for: Callable[[str], int] | None) -> dict:
    out = {k: replica.get(k) for k in ("replica_id", "state", "restarts", "pid", "port", "version")}
    out["health"] = _health(replica, ejected)
    started = replica.get("started_at")
    out["age_s"] = round(now - started, 1) if started else None
    out["in_flight"] = in_flight_for(replica["replica_id"]) if in_flight_for and replica.get("replica_id") else None
    for extra in ("phase", "exit_code", "stage", "reason"):
        if replica.get(extra) is not None:
            out[extra] = replica[extra]
    return out


def deployment_status(view: dict, endpoint: dict | None, live: LiveSeries | None, now: float, *,
                      ejected: set[str] = frozenset(),
                      in_flight_for: Callable[[str], int] | None = None) -> dict:
    """A deployment as `deployment show` describes it, trimmed, with its share of the
    endpoint's traffic, replica health and live figures."""
    name, endpoint_name = view["name"], view["endpoint_name"]
    key = (endpoint_name, name)
    scale = view.get("scale_settings") or {}
    replicas = [replica_status(r, now, ejected, in_flight_for) for r in view.get("replicas", [])]
    out = {
        "key": f"{endpoint_name}/{name}",
        "endpoint_name": endpoint_name,
        "name": name,
        "provisioning_state": view.get("provisioning_state"),
        "version": view.get("version"),
        "instance_type": view.get("instance_type"),
        "traffic_percent": (endpoint or {}).get("traffic", {}).get(name, 0),
        "mirror_percent": (endpoint or {}).get("mirror_traffic", {}).get(name, 0),
        "replicas_ready": view.get("ready_replicas", sum(1 for r in replicas if r["state"] == "ready")),
        "replicas_desired": view.get("desired_replicas", view.get("instance_count")),
        "replicas_ejected": sum(1 for r in replicas if r["health"] == "ejected"),
        "restarts": sum(r.get("restarts") or 0 for r in replicas),
        "scale": {k: scale.get(k) for k in ("type", "min_instances", "max_instances",
                                             "target_utilization_percentage")},
        "autoscale": view.get("autoscale"),
        "request_settings": view.get("request_settings"),
        "rollout": view.get("rollout"),
        "replicas": replicas,
        "in_flight_requests": view.get("in_flight_requests"),
        "queued_requests": view.get("queued_requests"),
    }
    if live is not None:
        out["live"] = {**live.figures(key, FIGURES_WINDOW_S), "series": live.series(key)}
    return out


def endpoint_status(view: dict, deployments: list[dict]) -> dict:
    mine = [d for d in deployments if d["endpoint_name"] == view["name"]]
    return {
        "name": view["name"],
        "kind": view.get("kind", "online"),
        "auth_mode": view.get("auth_mode"),
        "traffic": view.get("traffic", {}),
        "mirror_traffic": view.get("mirror_traffic", {}),
        "scoring_uri": view.get("scoring_uri"),
        "deployments": view.get("deployments", [d["name"] for d in mine]),
        "requests_per_s": round(sum((d.get("live") or {}).get("requests_per_s", 0.0) for d in mine), 3),
    }


def job_status(view: dict, now: float) -> dict:
    items = view.get("items") or {}
    started, finished = view.get("started_at"), view.get("finished_at")
    total = items.get("total") or 0
    done = (items.get("succeeded") or 0) + (items.get("failed") or 0)
    return {
        "id": view.get("id") or view.get("name"),
        "endpoint_name": view.get("endpoint_name"),
        "deployment_name": view.get("deployment_name"),
        "status": view.get("status"),
        "created_at": view.get("created_at"),
        "started_at": view.get("started_at"),
        "finished_at": view.get("finished_at"),
        "duration_s": view.get("duration_s"),
        "elapsed_s": round((finished or now) - started, 3) if started else None,
        "items": items,
        "mini_batches": view.get("mini_batches"),
        "progress": round(done / total, 4) if total else (1.0 if view.get("status") == "Completed" else 0.0),
        "error": (view.get("error") or {}).get("message"),
    }


def assemble(endpoints: list[dict], deployments: list[dict], *, batch_endpoints: list[dict] = (),
             jobs: list[dict] = (), live: LiveSeries | None = None, now: float | None = None,
             ejected: set[str] = frozenset(), in_flight_for: Callable[[str], int] | None = None,
             gateway: dict | None = None) -> dict:
    """The snapshot, from admin-API-shaped views of endpoints, deployments, batch
    endpoints and job views."""
    now = time.time() if now is None else now
    by_name = {e["name"]: e for e in endpoints}
    statuses = sorted((deployment_status(d, by_name.get(d["endpoint_name"]), live, now, ejected=ejected,
                                         in_flight_for=in_flight_for) for d in deployments),
                      key=lambda d: (d["endpoint_name"], -(d["traffic_percent"] or 0), d["name"]))
    job_list = sorted((job_status(j, now) for j in jobs), key=lambda j: -(j["created_at"] or 0))[:MAX_JOBS]
    return {
        "version": SNAPSHOT_VERSION,
        "generated_at": round(now, 3),
        "gateway": {"figures_window_s": FIGURES_WINDOW_S,
                    "series_window_s": live.window_s if live is not None else 0, **(gateway or {})},
        "endpoints": [endpoint_status(e, statuses) for e in sorted(endpoints, key=lambda e: e["name"])],
        "deployments": statuses,
        "batch": {
            "endpoints": [{"name": b["name"], "deployments": b.get("deployments", []),
                           "default_deployment": (b.get("defaults") or {}).get("deployment_name")}
                          for b in sorted(batch_endpoints, key=lambda b: b["name"])],
            "jobs": job_list,
        },
    }


async def build_snapshot(store, controller, backend, *, router=None, autoscaling=None, batch=None,
                         live: LiveSeries | None = None, registry=None, scoring_url: str = "") -> dict:
    """The snapshot of a gateway in this process. Store and batch reads (SQLite) run in
    a thread; the router's and controller's in-memory state is read here, on the loop.

    store: serving.store.Store; controller: its `.rollouts.rollout(key)`; backend:
    `.observe()`; router (optional): RouterApp (`load`, `in_flight_for`, `ejector`,
    `holder`, `recorder.registry`); autoscaling: Autoscaling; batch: BatchService;
    live: a LiveSeries to sample `registry` (default: the router's) into.
    """
    from ..views import deployment_view, endpoint_view

    records, desired = await asyncio.gather(asyncio.to_thread(store.list_endpoints),
                                            asyncio.to_thread(store.list_deployments))
    batch_endpoints, jobs = await asyncio.to_thread(_batch_views, batch) if batch is not None else ([], [])
    if registry is None and router is not None:
        registry = router.recorder.registry
    if live is not None and registry is not None:
        live.add(sample_registry(registry, live.clock()))
    replicas = backend.observe()
    views = []
    for deployment in desired:
        key = (deployment.endpoint_name, deployment.name)
        view = deployment_view(deployment, replicas, controller.rollouts.rollout(key))
        view["desired_replicas"] = deployment.instance_count
        if autoscaling is not None:
            view["desired_replicas"] = autoscaling.replicas_for(deployment)
            view["autoscale"] = autoscaling.status(*key)
        if router is not None:
            view["in_flight_requests"], view["queued_requests"] = router.load(*key)
        views.append(view)
    endpoints = [endpoint_view(r, [d for d in desired if d.endpoint_name == r.endpoint.name], scoring_url)
                 for r in records]
    gateway = {"source": "gateway", "scoring_url": scoring_url}
    if router is not None:
        gateway["routing_table_version"] = router.holder.current.version
    return assemble(endpoints, views, batch_endpoints=batch_endpoints, jobs=jobs, live=live,
                    ejected=set(router.ejector.ejected()) if router is not None else set(),
                    in_flight_for=router.in_flight_for if router is not None else None, gateway=gateway)


def _batch_views(batch) -> tuple[list[dict], list[dict]]:
    """Batch endpoints and their most recent jobs (short SQLite reads; run in a thread)."""
    endpoints = batch.list_endpoints()
    jobs = []
    for endpoint in endpoints:
        jobs += [batch.view(job) for job in batch.jobs.list(endpoint["name"], MAX_JOBS_PER_ENDPOINT)]
    return endpoints, jobs
