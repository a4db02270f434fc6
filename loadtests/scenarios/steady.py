"""steady: a constant rate for a while; is latency flat and is every request answered?

The baseline every other scenario is read against.  Besides the overall
percentiles it reports the worst second, because a steady average can hide
one bad second (a GC pause, a reconnect storm) that users do feel.
"""

from __future__ import annotations

from .base import Context, ScenarioReport, facts_table, run_load

NAME = "steady"
HELP = "constant rate; overall and worst-second latency, errors"


def add_arguments(p) -> None:
    """No options of its own: --rate (100, smoke 50) and --duration (30 s, smoke 2 s)."""


def worst_second(series: list[dict]) -> dict | None:
    """The second with the highest p99 among seconds that completed requests."""
    busy = [s for s in series if s["completed"]]
    return max(busy, key=lambda s: s["p99_ms"]) if busy else None


async def run(ctx: Context) -> ScenarioReport:
    rate = ctx.pick(ctx.args.rate, 100.0, 50.0)
    duration = ctx.pick(ctx.args.duration, 30.0, 2.0)
    result, _ = await run_load(ctx, f"constant:{rate:g}", duration)
    ok = result.latency_ok
    worst = worst_second(result.series)
    error_pct = 100.0 * result.failed / result.completed if result.completed else 0.0
    facts = {
        "target_rate": rate, "achieved_rate": round(result.achieved_rate, 1),
        "duration_s": duration, "sent": result.sent, "ok": result.ok, "failed": result.failed,
        "error_pct": round(error_pct, 3), "dropped_by_generator": result.dropped_total,
        "p50_ms": ok.percentile_ms(50), "p99_ms": ok.percentile_ms(99),
        "p99_9_ms": ok.percentile_ms(99.9), "max_ms": ok.max_us / 1000.0,
        "worst_second": worst["second"] if worst else None,
        "worst_second_p99_ms": worst["p99_ms"] if worst else None,
        "generator_fell_behind": result.fell_behind,
    }
    headline = (f"{rate:g} req/s for {duration:g} s: {result.ok}/{result.sent} ok "
                f"({error_pct:.2f}% errors), p50 {facts['p50_ms']:.2f} ms, "
                f"p99 {facts['p99_ms']:.2f} ms")
    if result.fell_behind:
        headline += " — the generator fell behind, the figures understate the load"
    rows = [("rate (target / achieved)", f"{rate:g} / {facts['achieved_rate']:g} req/s"),
            ("requests ok / failed", f"{result.ok} / {result.failed}"),
            ("p50 / p99 / p99.9 / max", f"{facts['p50_ms']:.2f} / {facts['p99_ms']:.2f} / "
                                        f"{facts['p99_9_ms']:.2f} / {facts['max_ms']:.2f} ms")]
    if worst:
        rows.append(("worst second", f"second {worst['second']}: p99 {worst['p99_ms']:.2f} ms, "
                                     f"{worst['failed']} failed"))
    return ScenarioReport(NAME, headline, facts, [facts_table(rows)], run=result)
