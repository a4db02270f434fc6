"""PNG plots of one or several runs on shared axes (e.g. direct vs gateway).

matplotlib is imported lazily with the Agg backend so that running a load
test never needs a display, and so that `run --no-plots` doesn't pay for the
import.  Each plot takes a list of results and draws one labeled line each.
"""

from __future__ import annotations

import math
from pathlib import Path

from .results import RunResult

LATENCY_PNG = "latency_over_time.png"
THROUGHPUT_PNG = "throughput.png"
CDF_PNG = "latency_cdf.png"
MAX_NINES = 5  # the percentile axis ends at 99.999 %


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _steps(series: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per-second values as a step line covering [second, second + 1)."""
    xs = [s["second"] for s in series] + [series[-1]["second"] + 1] if series else []
    ys = [s[key] for s in series] + [series[-1][key]] if series else []
    return xs, ys


def plot_latency_over_time(results: list[RunResult], path: Path) -> Path:
    """p50 (solid) and p99 (dashed) of the requests completed in each second."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for i, r in enumerate(results):
            busy = [s for s in r.series if s["completed"]]
            color = f"C{i % 10}"
            for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
                xs, ys = _steps(busy, key)
                ax.step(xs, [max(y, 0.001) for y in ys], where="post", color=color,
                        linestyle=style, label=f"{r.label} {key[:-3]}")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title("Latency percentiles over time (by completion second)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_throughput(results: list[RunResult], path: Path) -> Path:
    """Completed requests per second; failures dotted; the target dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for i, r in enumerate(results):
            color = f"C{i % 10}"
            ax.step(*_steps(r.series, "completed"), where="post", color=color,
                    label=f"{r.label} completed/s")
            if any(s["failed"] for s in r.series):
                ax.step(*_steps(r.series, "failed"), where="post", color=color,
                        linestyle=":", label=f"{r.label} failed/s")
            if r.mode == "open" and r.series:
                ax.step(*_steps(r.series, "scheduled"), where="post", color=color,
                        linestyle="--", alpha=0.5, label=f"{r.label} target/s")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("requests per second")
        ax.set_title("Throughput over time")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        return _save(fig, path)
    finally:
        plt.close(fig)


def _nines(fraction: float) -> float:
    """Percentile axis position: 0.9 -> 1, 0.99 -> 2, 0.999 -> 3 ..."""
    return min(MAX_NINES, -math.log10(max(1.0 - fraction, 10.0 ** -MAX_NINES)))


def plot_latency_cdf(results: list[RunResult], path: Path) -> Path:
    """Latency by percentile on a 'nines' axis, so the tail gets as much room as the body."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        top = 1
        for i, r in enumerate(results):
            points = r.latency_ok.cdf_points() or r.latency_all.cdf_points()
            if not points:
                continue
            xs, ys = [0.0], [max(points[0][0], 0.001)]
            for value_ms, fraction in points:
                # step: up to this value the cumulative fraction was the previous one
                xs.append(_nines(fraction))
                ys.append(max(value_ms, 0.001))  # log axis: no zeros
            top = max(top, math.ceil(max(xs)))
            ax.step(xs, ys, where="pre", color=f"C{i % 10}", label=r.label)
        ticks = list(range(0, min(top, MAX_NINES) + 1))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{100 - 100 * 10.0 ** -t:g}%" for t in ticks])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.set_title("Latency distribution (successful requests)")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_plots(results: list[RunResult], out_dir: str | Path) -> list[Path]:
    """All three plots into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_latency_over_time(results, out / LATENCY_PNG),
            plot_throughput(results, out / THROUGHPUT_PNG),
            plot_latency_cdf(results, out / CDF_PNG)]
