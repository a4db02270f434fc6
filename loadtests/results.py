"""A finished run as data: results.json for tools, summary.md for people.

The JSON keeps the encoded histograms next to the readable percentiles so
that `compare` (and the plots) can rebuild exact CDFs from files written by
earlier runs, possibly on another machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .histogram import PERCENTILES, LatencyHistogram
from .profiles import ProfileError, parse_profile
from .recorder import Recorder

RESULTS_JSON = "results.json"
SUMMARY_MD = "summary.md"
SCHEMA = "scoregate.loadtest/v1"
HISTOGRAMS = ("latency_all", "latency_ok", "lateness")


@dataclass
class RunResult:
    """What one (possibly multi-process) run measured, plus how it was run."""

    label: str
    config: dict  # mode, method, url, profile, duration_s, connections, processes, ...
    started_at: str = ""
    elapsed_s: float = 0.0
    scheduled: int = 0
    sent: int = 0
    completed: int = 0
    ok: int = 0
    failed: int = 0
    dropped: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    error_samples: dict = field(default_factory=dict)
    series: list = field(default_factory=list)
    latency_all: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_ok: LatencyHistogram = field(default_factory=LatencyHistogram)
    lateness: LatencyHistogram = field(default_factory=LatencyHistogram)

    @classmethod
    def from_recorder(cls, rec: Recorder, label: str, config: dict,
                      started_at: float | None = None) -> "RunResult":
        return cls(
            label=label, config=dict(config),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            elapsed_s=round(rec.elapsed, 3), scheduled=rec.scheduled, sent=rec.sent,
            completed=rec.completed, ok=rec.ok, failed=rec.failed,
            dropped=dict(rec.dropped), status={str(k): v for k, v in sorted(rec.status.items())},
            errors=dict(rec.errors), error_samples=dict(rec.error_samples),
            series=rec.series(), latency_all=rec.latency_all, latency_ok=rec.latency_ok,
            lateness=rec.lateness)

    # -- derived figures --------------------------------------------------
    @property
    def mode(self) -> str:
        return self.config.get("mode", "open")

    @property
    def duration(self) -> float:
        return float(self.config.get("duration_s") or 0.0)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def target_rate(self) -> float | None:
        """The profile's rate averaged over the run (open loop only): what was asked
        for, not scheduled starts / duration, which rounds to whole requests."""
        if self.mode != "open" or not self.duration:
            return None
        try:
            return parse_profile(self.config.get("profile") or "").mean_rate(self.duration)
        except ProfileError:  # a result written by something else: the schedule's figure
            return self.scheduled / self.duration

    @property
    def window_s(self) -> float:
        """The measured window: the whole --duration, or longer when answers came later.

        elapsed_s alone ends at the last answer, which at a low rate (or against
        a dead port) is long before the run's end and inflates throughput.
        """
        return max(self.duration, self.elapsed_s)

    @property
    def achieved_rate(self) -> float:
        """Starts actually sent per second of schedule (open) or of run (closed)."""
        window = self.duration if self.mode == "open" else self.window_s
        return self.sent / window if window else 0.0

    @property
    def throughput(self) -> float:
        """Finished requests (any outcome) per second of the measured window."""
        return self.completed / self.window_s if self.window_s else 0.0

    def behind_reasons(self) -> list[str]:
        """Why the generator did not produce the load it was asked for, if it didn't."""
        if self.mode != "open":
            return []
        reasons = []
        threshold = float(self.config.get("behind_threshold_ms", 25.0))
        p99 = self.lateness.percentile_ms(99)
        if p99 > threshold:
            reasons.append(f"p99 start lateness {p99:.1f} ms > {threshold:g} ms")
        cap = self.dropped.get("in_flight_cap", 0)
        if cap:
            reasons.append(f"{cap} requests dropped at the in-flight cap "
                           f"({self.config.get('max_in_flight')})")
        late = self.dropped.get("out_of_time", 0)
        if late:
            reasons.append(f"{late} scheduled requests never sent (generator out of time)")
        return reasons

    @property
    def fell_behind(self) -> bool:
        return bool(self.behind_reasons())

    # -- JSON -------------------------------------------------------------
    def to_dict(self) -> dict:
        target_rate = self.target_rate
        return {
            "schema": SCHEMA, "label": self.label, "config": self.config,
            "started_at": self.started_at, "elapsed_s": self.elapsed_s,
            "requests": {"scheduled": self.scheduled, "sent": self.sent,
                         "completed": self.completed, "ok": self.ok, "failed": self.failed,
                         "dropped": self.dropped_total, "dropped_by_reason": self.dropped},
            "rates": {"target": None if target_rate is None else _round(target_rate),
                      "achieved": _round(self.achieved_rate),
                      "throughput": _round(self.throughput), "window_s": round(self.window_s, 3)},
            "generator": {"fell_behind": self.fell_behind, "reasons": self.behind_reasons(),
                          "lateness_ms": self.lateness.summary()},
            "latency_ms": {"all": self.latency_all.summary(), "ok": self.latency_ok.summary()},
            "status": self.status, "errors": self.errors, "error_samples": self.error_samples,
            "series": self.series,
            "histograms": {name: getattr(self, name).encode() for name in HISTOGRAMS},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a loadtests result (schema {data.get('schema')!r})")
        req = data["requests"]
        hists = {name: LatencyHistogram.decode(data["histograms"][name]) for name in HISTOGRAMS}
        return cls(label=data["label"], config=data["config"], started_at=data["started_at"],
                   elapsed_s=data["elapsed_s"], scheduled=req["scheduled"], sent=req["sent"],
                   completed=req["completed"], ok=req["ok"], failed=req["failed"],
                   dropped=req["dropped_by_reason"], status=data["status"],
                   errors=data["errors"], error_samples=data["error_samples"],
                   series=data["series"], **hists)

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        """Read a results.json, or the one inside a run's output directory."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_JSON
        return cls.from_dict(json.loads(path.read_text()))

    def write(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / RESULTS_JSON, out / SUMMARY_MD]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        paths[1].write_text(self.summary_markdown())
        return paths

    # -- Markdown ---------------------------------------------------------
    def summary_markdown(self) -> str:
        c = self.config
        if self.mode == "open":
            shape = (f"open loop, profile `{c.get('profile')}` "
                     f"(target {_rate(self.target_rate or 0)} req/s)")
        else:
            shape = f"closed loop, {c.get('connections')} connections"
        lines = [
            f"# Load test: {self.label}", "",
            f"- target: `{c.get('method', 'GET')} {c.get('url')}`",
            f"- {shape}, {self.duration:g} s, {c.get('processes', 1)} process(es), "
            f"started {self.started_at}",
            f"- requests: {self.sent} sent"
            + (f" of {self.scheduled} scheduled" if self.mode == "open" else "")
            + f", {self.completed} completed, {self.ok} ok, {self.failed} failed"
            + (f", {self.dropped_total} dropped by the generator" if self.mode == "open" else ""),
            f"- rates: achieved {_rate(self.achieved_rate)} req/s"
            + (f" of {_rate(self.target_rate)} targeted" if self.target_rate is not None else "")
            + f", throughput {_rate(self.throughput)} req/s over {self.window_s:.2f} s",
        ]
        if self.mode == "open":
            lat = self.lateness
            verdict = ("**generator fell behind**: " + "; ".join(self.behind_reasons())
                       if self.fell_behind else "kept its schedule")
            lines.append(f"- generator: start lateness p99 {lat.percentile_ms(99):.2f} ms, "
                         f"max {lat.max_us / 1000:.2f} ms — {verdict}")
        lines += ["", "| latency (ms) | count | mean | p50 | p90 | p99 | p99.9 | max |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, hist in (("all", self.latency_all), ("ok", self.latency_ok)):
            lines.append(latency_row(name, hist))
        if self.status:
            lines += ["", "| status | count |", "|---|---:|"]
            lines += [f"| {code} | {n} |" for code, n in self.status.items()]
        if self.errors:
            lines += ["", "| error | count | first seen |", "|---|---:|---|"]
            lines += [f"| {kind} | {n} | {_cell(self.error_samples.get(kind, ''))} |"
                      for kind, n in sorted(self.errors.items())]
        return "\n".join(lines) + "\n"


def _rate(value: float) -> str:
    """req/s to one decimal; below 1, two significant digits (0.5, 0.0001), not 0.0."""
    return f"{value:.1f}" if value >= 0.95 or value == 0 else f"{value:.2g}"


def _round(value: float) -> float:
    """3 decimals for JSON, or 3 significant digits below 0.1 (a rate of 0.0001 stays)."""
    return round(value, 3) if value >= 0.1 or value == 0 else float(f"{value:.3g}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


NO_SAMPLES = "-"  # an empty histogram reads 0: never print that as a measured 0.00 ms


def _ms(hist: LatencyHistogram, value_ms: float, sign: str = "") -> str:
    return f"{value_ms:{sign}.2f}" if hist.count else NO_SAMPLES


def _percentile_cells(hist: LatencyHistogram) -> str:
    """p50 | p90 | p99 | p99.9 | max in ms, or dashes when nothing was measured."""
    return " | ".join([_ms(hist, hist.percentile_ms(p)) for p in PERCENTILES]
                      + [_ms(hist, hist.max_us / 1000)])


def latency_row(name: str, hist: LatencyHistogram) -> str:
    return (f"| {_cell(name)} | {hist.count} | {_ms(hist, hist.mean_us / 1000)} | "
            f"{_percentile_cells(hist)} |")


def comparison_markdown(results: list[RunResult]) -> str:
    """One table for several runs; latency deltas against the first (the baseline)."""
    lines = ["# Load test comparison", "",
             "| run | mode | target req/s | achieved req/s | ok | failed | dropped | "
             "p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | fell behind |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        tr = _rate(r.target_rate) if r.target_rate is not None else "-"
        lines.append(f"| {_cell(r.label)} | {r.mode} | {tr} | {_rate(r.achieved_rate)} | {r.ok} | "
                     f"{r.failed} | {r.dropped_total} | {_percentile_cells(r.latency_ok)} | "
                     f"{'yes' if r.fell_behind else 'no'} |")
    if len(results) > 1:
        base = results[0]
        lines += ["", f"Added latency of successful requests over `{_cell(base.label)}`:", "",
                  "| run | Δp50 ms | Δp90 ms | Δp99 ms | Δp99.9 ms |", "|---|---:|---:|---:|---:|"]
        for r in results[1:]:
            both = r.latency_ok if base.latency_ok.count else base.latency_ok
            deltas = " | ".join(
                _ms(both, r.latency_ok.percentile_ms(p) - base.latency_ok.percentile_ms(p), "+")
                for p in PERCENTILES)
            lines.append(f"| {_cell(r.label)} | {deltas} |")
    return "\n".join(lines) + "\n"
