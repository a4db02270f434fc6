"""burst: a base rate with one sudden burst; what happens during it, and after?

Users want to know whether a spike is absorbed (queued, a bit slower),
refused cleanly (429/503 with Retry-After) or turns into timeouts, and how
long latency takes to return to normal once the spike is over.  Recovery is
the first whole second after the burst whose p99 is within 2x (and 5 ms) of
the p99 before the burst.
"""

from __future__ import annotations

import math

from ..cli import UsageError, _number, _positive
from .base import Context, ScenarioReport, facts_table, run_load, seconds_label
from .timeline import outcomes_text, window

NAME = "burst"
HELP = "base rate plus one burst; errors during it and time to recover"
RECOVERED_FACTOR = 2.0
RECOVERED_SLACK_MS = 5.0


def add_arguments(p) -> None:
    p.add_argument("--peak", type=_positive(float), help="burst rate in req/s (10x --rate; smoke 5x)")
    p.add_argument("--at", type=_number(float, 0), help="burst start, seconds into the run (10; smoke 1)")
    p.add_argument("--length", type=_positive(float), help="burst length in seconds (2; smoke 0.5)")


def normal_limit(baseline_p99: float) -> float:
    """The highest p99 still counted as normal, given the p99 before the burst."""
    return max(RECOVERED_FACTOR * baseline_p99, baseline_p99 + RECOVERED_SLACK_MS)


def recovery_second(series: list[dict], after: float, baseline_p99: float) -> int | None:
    """First whole second from `after` on whose p99 is back near the baseline."""
    limit = normal_limit(baseline_p99)
    for s in series:
        if s["second"] >= after and s["completed"] and s["p99_ms"] <= limit:
            return s["second"]
    return None


async def run(ctx: Context) -> ScenarioReport:
    base = ctx.pick(ctx.args.rate, 100.0, 20.0)
    peak = ctx.pick(ctx.args.peak, 10 * base, 5 * base)
    at = ctx.pick(ctx.args.at, 10.0, 1.0)
    length = ctx.pick(ctx.args.length, 2.0, 0.5)
    duration = ctx.pick(ctx.args.duration, at + length + 15.0, at + length + 1.5)
    if at + length >= duration:
        raise UsageError(f"the burst must end before --duration: --at {at:g} + --length {length:g} >= {duration:g} s")
    result, rec = await run_load(ctx, f"burst:{base:g},{peak:g}@{at:g}s+{length:g}s", duration)
    end = at + length
    before = window(rec, 0, at)
    during = window(rec, at, end)
    after = window(rec, math.ceil(end), duration)
    failed_during = rec.failures_between(at, end + 1.0)
    stayed_normal = not failed_during and during["p99_ms"] <= normal_limit(before["p99_ms"])
    back = None if stayed_normal else recovery_second(result.series, math.ceil(end),
                                                      before["p99_ms"])
    recovered_after = 0.0 if stayed_normal else (None if back is None else max(0.0, back - end))
    facts = {"base_rate": base, "peak_rate": peak, "burst_at_s": at, "burst_length_s": length,
             "requests_in_burst": round(peak * length), "before": before, "during": during,
             "after": after, "stayed_normal": stayed_normal,
             "failed_during_burst": sum(failed_during.values()),
             "failed_during_burst_by_outcome": dict(failed_during),
             "failed_total": result.failed, "recovered_after_s": recovered_after,
             "generator_fell_behind": result.fell_behind}
    verdict = ("absorbed without errors" if not failed_during
               else f"{sum(failed_during.values())} failed ({outcomes_text(failed_during)})")
    if stayed_normal:
        recovery = "p99 stayed within 2x of normal"
    elif recovered_after is not None:
        recovery = f"latency back to normal {recovered_after:.1f} s after it (by whole seconds)"
    else:
        recovery = "latency not back to normal by the end"
    headline = f"burst of {peak:g} req/s for {length:g} s over {base:g} req/s: {verdict}; {recovery}"
    rows = [("p99 before / during / after", f"{before['p99_ms']:.2f} / {during['p99_ms']:.2f} / "
                                            f"{after['p99_ms']:.2f} ms"),
            ("failed during the burst (+1 s)", outcomes_text(failed_during)),
            ("failed in the whole run", result.failed),
            ("recovered after", seconds_label(recovered_after))]
    timeline = [{"t_s": at, "event": f"burst starts ({peak:g} req/s)"},
                {"t_s": end, "event": f"burst ends (back to {base:g} req/s)"}]
    if back is not None:
        timeline.append({"t_s": float(back), "event": "first second with p99 back to normal"})
    return ScenarioReport(NAME, headline, facts, [facts_table(rows)], timeline, result)
