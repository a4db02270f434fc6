"""replica-failure: SIGKILL a replica mid-run; how many requests fail, for how long?

The replica is killed by the pid the admin API shows, so the gateway must run
on this machine (and the pid must be one of its descendants: a stale pid is
never killed).  Two recoveries are reported: when requests stopped failing
(the router routed around the dead replica) and when a replacement replica
was ready again (the controller restarted it); time to recovery is the later.
"""

from __future__ import annotations

import asyncio
import os
import signal

from ..admin import main_deployment, ready_replicas
from ..cli import _number
from .base import Context, ScenarioError, ScenarioReport, admin, facts_table, run_load, seconds_label
from .deployments import is_descendant, snapshot
from .timeline import Watch, outcomes_text

NAME = "replica-failure"
HELP = "SIGKILL a replica mid-run; failed requests and time to recovery"
POLL_S = 0.1


def add_arguments(p) -> None:
    p.add_argument("--deployment", help="deployment whose replica dies (the one with most traffic)")
    p.add_argument("--at", type=_number(float, 0), help="kill at this many seconds into the run "
                   "(30%% of the duration)")
    p.add_argument("--which", type=_number(int, 0), default=0,
                   help="index of the ready replica to kill, oldest first (0)")


def _kill(pid: int, gateway_pid: int) -> None:
    if not is_descendant(pid, gateway_pid):
        raise ScenarioError(f"pid {pid} is not a process of the gateway (pid {gateway_pid}) "
                            "on this machine; not killing it")
    os.kill(pid, signal.SIGKILL)


async def run(ctx: Context) -> ScenarioReport:
    gateway, endpoint = ctx.gateway()
    if not gateway.is_local:
        raise ScenarioError("replica-failure kills a replica process: the gateway must run "
                            f"on this machine (admin API at {gateway.admin_url})")
    name = ctx.args.deployment or main_deployment(await admin(gateway.endpoint, endpoint))
    rate = ctx.pick(ctx.args.rate, 100.0, 30.0)
    duration = ctx.pick(ctx.args.duration, 30.0, 4.0)
    at = ctx.args.at if ctx.args.at is not None else round(0.3 * duration, 2)
    timeline: list[dict] = []
    state: dict = {}

    def event(t: float, text: str) -> None:
        timeline.append({"t_s": round(t, 3), "event": text})

    async def kill(watch: Watch) -> None:
        if not await watch.until(at):
            return
        ready = ready_replicas(await admin(gateway.deployment, endpoint, name))
        if len(ready) <= ctx.args.which:
            raise ScenarioError(f"{endpoint}/{name} has {len(ready)} ready replica(s); "
                                f"cannot kill number {ctx.args.which}")
        victim = ready[ctx.args.which]
        await asyncio.to_thread(_kill, int(victim["pid"]), gateway.pid)
        state.update(kill_at=watch.now(), victim=victim["replica_id"], pid=victim["pid"],
                     ready_before=len(ready))
        event(state["kill_at"], f"SIGKILL replica {victim['replica_id']} (pid {victim['pid']}); "
                                f"{len(ready)} were ready")
        while watch.active:
            snap = snapshot(await admin(gateway.deployment, endpoint, name))
            gone = int(victim["pid"]) not in snap["ready_pids"]  # a restart may keep the id
            if gone and "noticed_at" not in state:
                state["noticed_at"] = watch.now()
                event(state["noticed_at"], f"gateway no longer lists it ready "
                                           f"({snap['ready']} ready)")
            if gone and snap["ready"] >= len(ready):
                state["replaced_at"] = watch.now()
                event(state["replaced_at"], f"{snap['ready']} replicas ready again")
                return
            await asyncio.sleep(POLL_S)

    result, rec = await run_load(ctx, f"constant:{rate:g}", duration, kill)
    if "kill_at" not in state:
        raise ScenarioError("the load ended before the replica was killed (--at too late?)")
    kill_at = state["kill_at"]
    failed = rec.failures_between(kill_at)
    last = rec.last_failure_after(kill_at)
    errors_for = None if last is None else last - kill_at
    replaced = state.get("replaced_at")
    replaced_after = None if replaced is None else replaced - kill_at
    recovery = None if replaced_after is None else max(replaced_after, errors_for or 0.0)
    facts = {"deployment": f"{endpoint}/{name}", "rate": rate, "killed_at_s": round(kill_at, 3),
             "victim": state["victim"], "victim_pid": state["pid"],
             "ready_before": state["ready_before"],
             "failed_after_kill": sum(failed.values()), "failed_after_kill_by_outcome": dict(failed),
             "failed_before_kill": len(rec.failures) - sum(failed.values()),
             "errors_stopped_after_s": None if errors_for is None else round(errors_for, 3),
             "replacement_ready_after_s": None if replaced_after is None else round(replaced_after, 3),
             "time_to_recovery_s": None if recovery is None else round(recovery, 3),
             "generator_fell_behind": result.fell_behind}
    head = f"killed 1 of {state['ready_before']} replica(s) of {endpoint}/{name} at {rate:g} req/s: "
    head += f"{facts['failed_after_kill']} failed request(s)"
    if errors_for is not None:
        head += f", the last {errors_for:.2f} s after the kill"
    head += (f"; recovered (replacement ready) after {recovery:.2f} s" if recovery is not None
             else "; no replacement ready by the end of the load (+ grace)")
    if replaced is not None and replaced > duration:
        head += " (the replacement came after the load ended)"
    rows = [("failed after the kill", outcomes_text(failed)),
            ("requests failed until", f"{seconds_label(errors_for)} after the kill"),
            ("replacement ready after", seconds_label(replaced_after)),
            ("time to recovery", seconds_label(recovery))]
    return ScenarioReport(NAME, head, facts, [facts_table(rows)], timeline, result)
