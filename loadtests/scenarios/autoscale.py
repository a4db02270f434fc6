"""autoscale: ramp the rate until the deployment grows; when did new replicas appear?

Meant for a deployment with `scale_settings: {type: target_utilization}`.
The replica counts the admin API shows (ready, starting + ready, and the
autoscaler's desired count when it reports one) are sampled during the ramp;
the report gives when the desired count first rose (the decision), when the
first new replica was ready (the effect), the rate at those moments, and the
failed requests before the extra capacity arrived.  If nothing grew, it says
"no scale-up observed" — it never infers a scale-up it did not see.
"""

from __future__ import annotations

import asyncio

from ..admin import main_deployment
from ..cli import _positive
from ..profiles import parse_profile
from .base import Context, ScenarioReport, admin, facts_table, run_load, seconds_label
from .deployments import snapshot
from .timeline import Watch, outcomes_text

NAME = "autoscale"
HELP = "ramp the rate until new replicas appear; when they did, or that none did"


def add_arguments(p) -> None:
    p.add_argument("--deployment", help="deployment to watch (the one with most traffic)")
    p.add_argument("--start-rate", type=_positive(float), help="ramp start, req/s (10; smoke 5)")
    p.add_argument("--max-rate", type=_positive(float), help="ramp end, req/s (500; smoke 40)")
    p.add_argument("--ramp-seconds", type=_positive(float), help="ramp length (80%% of the duration), "
                   "then held at --max-rate")
    p.add_argument("--poll", type=_positive(float), default=0.5, help="seconds between replica counts (0.5)")


def first(samples: list[dict], key: str, above: int) -> dict | None:
    return next((s for s in samples if (s.get(key) or 0) > above), None)


async def run(ctx: Context) -> ScenarioReport:
    gateway, endpoint = ctx.gateway()
    name = ctx.args.deployment or main_deployment(await admin(gateway.endpoint, endpoint))
    duration = ctx.pick(ctx.args.duration, 60.0, 3.0)
    start_rate = ctx.pick(ctx.args.start_rate, 10.0, 5.0)
    max_rate = ctx.pick(ctx.args.max_rate, 500.0, 40.0)
    ramp_s = ctx.args.ramp_seconds or round(0.8 * duration, 2)
    profile = parse_profile(f"ramp:{start_rate:g},{max_rate:g}@{ramp_s:g}s")
    view = await admin(gateway.deployment, endpoint, name)
    settings = view.get("scale_settings") or {}
    initial = snapshot(view)
    samples: list[dict] = [{"t_s": 0.0, **_counts(initial), "rate": start_rate}]

    async def watch_counts(watch: Watch) -> None:
        """Sample the counts; keep a sample when they change, and the last one."""
        if not await watch.wait_started():
            return
        last = None
        while watch.running:
            snap = snapshot(await admin(gateway.deployment, endpoint, name))
            t = watch.now()
            last = {"t_s": round(t, 2), **_counts(snap), "rate": round(profile.rate(t), 1)}
            if _counts(last) != _counts(samples[-1]):
                samples.append(last)
            await asyncio.sleep(ctx.args.poll)
        if last is not None and last is not samples[-1]:
            samples.append(last)

    result, rec = await run_load(ctx, profile.spec, duration, watch_counts)
    base_ready = initial["ready"]
    base_desired = initial["desired"] or base_ready
    decided = first(samples, "desired", base_desired)
    grown = first(samples, "ready", base_ready)
    top_ready = max(s["ready"] for s in samples)
    top_desired = max((s["desired"] or 0) for s in samples)
    failed_before = rec.failures_between(0.0, grown["t_s"] if grown else duration + 60)
    facts = {"deployment": f"{endpoint}/{name}", "scale_settings": settings,
             "autoscaled": settings.get("type") == "target_utilization",
             "ramp": profile.spec, "duration_s": duration,
             "ready_at_start": base_ready, "ready_max": top_ready, "desired_max": top_desired,
             "scale_up_observed": grown is not None,
             "scale_up_decided_at_s": decided["t_s"] if decided else None,
             "rate_at_decision": decided["rate"] if decided else None,
             "first_new_replica_ready_at_s": grown["t_s"] if grown else None,
             "rate_at_first_new_replica": grown["rate"] if grown else None,
             "failed_before_new_replica": dict(failed_before), "failed_total": result.failed,
             "samples": samples, "generator_fell_behind": result.fell_behind}
    if grown is not None:
        headline = (f"scaled up {base_ready} → {top_ready} ready replicas of {endpoint}/{name}; "
                    f"first new replica ready at {grown['t_s']:.1f} s (at {grown['rate']:g} req/s)")
        if decided is not None:
            headline += f", decided at {decided['t_s']:.1f} s"
    else:
        headline = (f"no scale-up observed: {endpoint}/{name} stayed at {base_ready} ready "
                    f"replica(s) up to {profile.rate(duration):g} req/s"
                    + (f" (the autoscaler wanted {top_desired})" if top_desired > base_desired else ""))
        if not facts["autoscaled"]:
            headline += f"; its scale_settings.type is {settings.get('type', 'unknown')!r}"
    rows = [("scale settings", ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"),
            ("ready replicas (start → max)", f"{base_ready} → {top_ready}"),
            ("desired replicas (max)", top_desired),
            ("scale-up decided at", seconds_label(facts["scale_up_decided_at_s"])),
            ("first new replica ready at", seconds_label(facts["first_new_replica_ready_at_s"])),
            ("failed before new capacity", outcomes_text(failed_before))]
    counts = ["| t (s) | rate req/s | ready | starting+ready | desired |", "|---:|---:|---:|---:|---:|"]
    counts += [f"| {s['t_s']:.1f} | {s['rate']:g} | {s['ready']} | {s['live']} | {s['desired']} |"
               for s in samples]
    return ScenarioReport(NAME, headline, facts, [facts_table(rows), "\n".join(counts)],
                          run=result)


def _counts(snap: dict) -> dict:
    return {k: snap[k] for k in ("ready", "live", "desired")}
