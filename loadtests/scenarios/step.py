"""step: the rate climbs in steps; up to which rate does the target keep up?

Each step holds one rate.  A step "keeps up" when almost every request
succeeds, the target completes what was scheduled, and p99 stays within a
few times the first step's; the last step that keeps up is the answer a
capacity planner wants (statistics by whole seconds of completion, so the
first second of each step is skipped to let the previous one drain).
"""

from __future__ import annotations

from ..cli import _positive
from .base import Context, ScenarioReport, facts_table, run_load
from .timeline import window

NAME = "step"
HELP = "rate in steps; per-step latency and errors, the highest rate that kept up"
P99_GROWTH = 3.0  # a step whose p99 exceeds 3x the first step's no longer keeps up
MAX_ERROR_PCT = 1.0
MIN_THROUGHPUT = 0.95


def _rates(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--rates needs positive numbers, e.g. 100,200,400: {text!r}")
    return rates


def add_arguments(p) -> None:
    p.add_argument("--rates", type=_rates, help="comma-separated req/s per step "
                   "(100,200,400,800,1600; smoke 20,40)")
    p.add_argument("--step-seconds", type=_positive(float), help="length of each step (10; smoke 1; "
                   "or --duration / number of steps)")


def judge(step: dict, first_p99: float) -> str | None:
    """Why a step did not keep up, or None if it did."""
    if step["completed"] and 100.0 * step["failed"] / step["completed"] > MAX_ERROR_PCT:
        return f"{step['failed']} of {step['completed']} failed"
    if step["throughput"] < MIN_THROUGHPUT * step["rate"]:
        return f"completed {step['throughput']:g} of {step['rate']:g} req/s"
    if first_p99 and step["p99_ms"] > P99_GROWTH * max(first_p99, 1.0):
        return f"p99 {step['p99_ms']:.1f} ms > {P99_GROWTH:g}x the first step's"
    return None


async def run(ctx: Context) -> ScenarioReport:
    rates = ctx.pick(ctx.args.rates, [100.0, 200.0, 400.0, 800.0, 1600.0], [20.0, 40.0])
    every = ctx.args.step_seconds or (ctx.args.duration / len(rates) if ctx.args.duration
                                      else ctx.pick(None, 10.0, 1.0))
    profile = "step:" + ",".join(f"{r:g}" for r in rates) + f"@{every:g}s"
    result, rec = await run_load(ctx, profile, every * len(rates))
    steps, first_p99, kept, broke = [], 0.0, None, None
    for i, rate in enumerate(rates):
        skip = 1.0 if every >= 3 else 0.0  # drain of the previous step
        w = window(rec, i * every + skip, (i + 1) * every)
        w["rate"] = rate
        w["throughput"] = round(w["completed"] / max(1e-9, w["to_s"] - w["from_s"]), 1)
        if i == 0:
            first_p99 = w["p99_ms"]
        w["problem"] = judge(w, first_p99)
        steps.append(w)
        if w["problem"] is None and broke is None:
            kept = rate
        elif broke is None:
            broke = w
    if broke is None:
        headline = f"kept up at every step, up to {rates[-1]:g} req/s"
    elif kept is None:
        headline = f"did not keep up even at {rates[0]:g} req/s ({broke['problem']})"
    else:
        headline = (f"kept up to {kept:g} req/s; at {broke['rate']:g} req/s: "
                    f"{broke['problem']}")
    if result.fell_behind:
        headline += " (the generator fell behind: the higher steps measure the generator)"
    table = ["| step req/s | completed/s | failed | p50 ms | p99 ms | max ms | verdict |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    table += [f"| {s['rate']:g} | {s['throughput']:g} | {s['failed']} | {s['p50_ms']:.2f} | "
              f"{s['p99_ms']:.2f} | {s['max_ms']:.2f} | {s['problem'] or 'kept up'} |"
              for s in steps]
    facts = {"rates": rates, "step_seconds": every, "highest_rate_kept_up": kept,
             "first_rate_not_kept_up": broke["rate"] if broke else None, "steps": steps,
             "generator_fell_behind": result.fell_behind}
    summary = facts_table([("highest rate that kept up", f"{kept:g} req/s" if kept else "none"),
                           ("steps", f"{len(rates)} × {every:g} s")])
    return ScenarioReport(NAME, headline, facts, [summary, "\n".join(table)], run=result)
