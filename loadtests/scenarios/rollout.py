"""rollout: apply a new version of a deployment mid-run; did any request fail?

By default the new version is the running deployment with one environment
variable changed (SCOREGATE_LOADTEST_ROLLOUT=<time>), which makes every
replica be replaced, as a real new version would; --manifest applies your
own YAML instead.  The rollout lasts from the apply until the deployment is
Succeeded with none of the old replicas left; failed requests in that window
(plus 1 s for answers in flight) are the figure users ask for.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ..admin import main_deployment
from ..cli import _number
from .base import Context, ScenarioError, ScenarioReport, admin, facts_table, run_load, seconds_label
from .deployments import as_document, deployment_body, manifest_documents, snapshot
from .timeline import Watch, outcomes_text, window

NAME = "rollout"
HELP = "apply a new deployment version mid-run; failed requests during the rollout"
ROLLOUT_ENV = "SCOREGATE_LOADTEST_ROLLOUT"
POLL_S = 0.1


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set-env needs KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(p) -> None:
    p.add_argument("--deployment", help="deployment to roll (the one with most traffic)")
    p.add_argument("--at", type=_number(float, 0), help="apply at this many seconds into the run "
                   "(30%% of the duration)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--set-env", type=_env, action="append", metavar="KEY=VALUE",
                       help=f"environment variable(s) of the new version ({ROLLOUT_ENV}=<time>)")
    group.add_argument("--manifest", type=Path, action="append",
                       help="apply this YAML file (repeatable) as the new version")


async def run(ctx: Context) -> ScenarioReport:
    gateway, endpoint = ctx.gateway()
    name = ctx.args.deployment or main_deployment(await admin(gateway.endpoint, endpoint))
    rate = ctx.pick(ctx.args.rate, 100.0, 30.0)
    duration = ctx.pick(ctx.args.duration, 30.0, 4.0)
    at = ctx.args.at if ctx.args.at is not None else round(0.3 * duration, 2)
    if ctx.args.manifest:
        documents, env = manifest_documents(ctx.args.manifest), {}
        change = "applied " + ", ".join(str(p) for p in ctx.args.manifest)
    else:
        env = dict(ctx.args.set_env or [(ROLLOUT_ENV, str(int(time.time())))])
        change = "environment " + ", ".join(f"{k}={v}" for k, v in env.items())
        documents = None
    timeline: list[dict] = []
    state: dict = {}

    def event(t: float, text: str) -> None:
        timeline.append({"t_s": round(t, 3), "event": text})

    async def roll(watch: Watch) -> None:
        if not await watch.until(at):
            return
        before = await admin(gateway.deployment, endpoint, name)
        old = set(snapshot(before)["live_ids"])
        docs = documents or [as_document(deployment_body(before, env), "loadtests-rollout",
                                         before["code_configuration"]["code"])]
        state["old"] = sorted(old)
        state["apply_at"] = watch.now()
        await admin(gateway.apply, docs)
        event(state["apply_at"], f"apply new version of {name} ({change})")
        last = None
        while watch.active:
            view = await admin(gateway.deployment, endpoint, name)
            snap = snapshot(view)
            seen = (snap["state"], snap["ready"], snap["live"], tuple(snap["live_ids"]))
            if seen != last:
                last = seen
                event(watch.now(), f"{snap['state']}: {snap['ready']} ready, {snap['live']} "
                                   f"live, old left {len(old & set(snap['live_ids']))}")
            if snap["state"] == "Failed":  # the controller gave up (and maybe rolled back)
                rollout = view.get("rollout") or {}
                state["failed"] = (f"{rollout.get('failed_stage', '?')}: "
                                   f"{rollout.get('reason', 'no reason given')}"
                                   + (" (rolled back)" if rollout.get("rolled_back") else ""))
                event(watch.now(), f"rollout failed in {state['failed']}")
                return
            if snap["state"] == "Succeeded" and not old & set(snap["live_ids"]):
                state["done_at"], state["new"] = watch.now(), snap["live_ids"]
                return
            await asyncio.sleep(POLL_S)

    result, rec = await run_load(ctx, f"constant:{rate:g}", duration, roll)
    if "apply_at" not in state:
        raise ScenarioError("the load ended before the rollout was applied (--at too late?)")
    start, done = state["apply_at"], state.get("done_at")
    took = None if done is None else done - start
    failed = rec.failures_between(start, (done if done is not None else duration) + 1.0)
    n_failed = sum(failed.values())
    facts = {"deployment": f"{endpoint}/{name}", "change": change, "rate": rate,
             "applied_at_s": round(start, 3), "finished_at_s": None if done is None else round(done, 3),
             "rollout_s": None if took is None else round(took, 3),
             "failed_during_rollout": n_failed, "failed_during_rollout_by_outcome": dict(failed),
             "failed_total": result.failed, "rollout_error": state.get("failed"),
             "old_replicas": state.get("old", []),
             "new_replicas": state.get("new", []),
             "before": window(rec, 0, start),
             "during": window(rec, start, done if done is not None else duration),
             "after": window(rec, done, duration) if done is not None and done < duration - 1 else None,
             "generator_fell_behind": result.fell_behind}
    if "failed" in state:
        headline = (f"rollout of {endpoint}/{name} FAILED ({state['failed']}); "
                    f"{n_failed} requests failed from the apply to the end of the load")
    elif took is None:
        headline = (f"rollout of {endpoint}/{name} not finished when the load ended "
                    f"({duration - start:.1f} s after the apply); {n_failed} requests failed since")
    else:
        headline = (f"rollout of {endpoint}/{name} took {took:.2f} s under {rate:g} req/s: "
                    f"{n_failed} failed requests during the rollout "
                    f"({result.failed} in the whole run)")
        if done > duration:
            headline += " — it ended after the load did, so its last part was not measured"
    rows = [("change", change), ("rollout took", seconds_label(took)),
            ("failed during the rollout (+1 s)", outcomes_text(failed)),
            ("failed in the whole run", result.failed),
            ("p99 before / during", f"{facts['before']['p99_ms']:.2f} / "
                                    f"{facts['during']['p99_ms']:.2f} ms"),
            ("replicas", f"{', '.join(facts['old_replicas']) or '-'} → "
                         f"{', '.join(facts['new_replicas']) or '-'}")]
    return ScenarioReport(NAME, headline, facts, [facts_table(rows)], timeline, result)

