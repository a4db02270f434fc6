"""Everything one run measures, in a collector that merges across processes.

Generators call on_start / on_done / on_drop and never compute statistics on
the hot path beyond a histogram increment.  A worker process sends its
snapshot() (plain picklable data, histograms encoded) to the parent, which
merges them; the per-second buckets are keyed by whole seconds since a start
time shared by all workers, so they line up.
"""

from __future__ import annotations

from collections import Counter

from .histogram import LatencyHistogram

SERIES_DIGITS = 2  # per-second histograms: 1 % precision is plenty, 8x smaller


class _Second:
    __slots__ = ("scheduled", "sent", "completed", "failed", "hist")

    def __init__(self) -> None:
        self.scheduled = 0
        self.sent = 0
        self.completed = 0
        self.failed = 0
        self.hist = LatencyHistogram(SERIES_DIGITS)


class Recorder:
    """Counts, histograms and a per-second series for one run (or merged runs)."""

    def __init__(self, t0: float = 0.0) -> None:
        self.t0 = t0
        self.latency_all = LatencyHistogram()
        self.latency_ok = LatencyHistogram()
        self.lateness = LatencyHistogram()
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.dropped: Counter[str] = Counter()
        self.scheduled = 0
        self.sent = 0
        self.completed = 0
        self.ok = 0
        self.failed = 0
        self.in_flight = 0
        self.elapsed = 0.0
        self.seconds: dict[int, _Second] = {}

    def _second(self, t: float) -> _Second:
        idx = max(0, int(t - self.t0))
        sec = self.seconds.get(idx)
        if sec is None:
            sec = self.seconds[idx] = _Second()
        return sec

    # -- hot path --------------------------------------------------------
    def on_scheduled(self, offset: float) -> None:
        """One more start in the open-loop schedule, `offset` s after t0."""
        self.scheduled += 1
        self._second(self.t0 + offset).scheduled += 1

    def on_start(self, now: float, lateness_s: float | None = None) -> None:
        self.sent += 1
        self.in_flight += 1
        if lateness_s is not None:
            self.lateness.record_seconds(max(0.0, lateness_s))
        self._second(now).sent += 1

    def on_done(self, begin: float, end: float, status: int | None,
                kind: str | None, message: str | None = None) -> None:
        """`begin` is the scheduled start (open loop) or the actual one (closed)."""
        self.in_flight -= 1
        self.completed += 1
        latency = end - begin
        self.latency_all.record_seconds(latency)
        success = status is not None and status < 400
        if status is not None:
            self.status[status] += 1
        else:
            self.errors[kind or "other"] += 1
            if message and kind not in self.error_samples:
                self.error_samples[kind or "other"] = message
        sec = self._second(end)
        sec.completed += 1
        sec.hist.record_seconds(latency)
        if success:
            self.ok += 1
            self.latency_ok.record_seconds(latency)
        else:
            self.failed += 1
            sec.failed += 1

    def on_drop(self, reason: str, count: int = 1) -> None:
        """A scheduled request the generator could not send: counted, never hidden."""
        if count > 0:
            self.dropped[reason] += count

    def counts(self) -> tuple[int, int, int, int, int]:
        """(sent, completed, failed, dropped, in flight) for the progress line."""
        return (self.sent, self.completed, self.failed, sum(self.dropped.values()),
                self.in_flight)

    def series(self) -> list[dict]:
        """Per second since start: scheduled and sent (by start time), completed,
        failed and p50/p99/max ms (by completion time)."""
        if not self.seconds:
            return []
        out = []
        for idx in range(max(self.seconds) + 1):
            sec = self.seconds.get(idx) or _Second()
            out.append({"second": idx, "scheduled": sec.scheduled, "sent": sec.sent, "completed": sec.completed,
                        "failed": sec.failed, "p50_ms": sec.hist.percentile_ms(50),
                        "p99_ms": sec.hist.percentile_ms(99), "max_ms": sec.hist.max_us / 1000.0})
        return out

    # -- transport between processes --------------------------------------
    def snapshot(self) -> dict:
        return {
            "t0": self.t0, "elapsed": self.elapsed, "scheduled": self.scheduled,
            "sent": self.sent, "completed": self.completed, "ok": self.ok,
            "failed": self.failed, "in_flight": self.in_flight,
            "status": dict(self.status), "errors": dict(self.errors),
            "error_samples": dict(self.error_samples), "dropped": dict(self.dropped),
            "latency_all": self.latency_all.encode(), "latency_ok": self.latency_ok.encode(),
            "lateness": self.lateness.encode(),
            "seconds": {i: (s.scheduled, s.sent, s.completed, s.failed, s.hist.encode())
                        for i, s in self.seconds.items()},
        }

    @classmethod
    def from_snapshot(cls, snap: dict) -> "Recorder":
        rec = cls(snap["t0"])
        for name in ("elapsed", "scheduled", "sent", "completed", "ok", "failed", "in_flight"):
            setattr(rec, name, snap[name])
        rec.status.update({int(k): v for k, v in snap["status"].items()})
        rec.errors.update(snap["errors"])
        rec.error_samples.update(snap["error_samples"])
        rec.dropped.update(snap["dropped"])
        for name in ("latency_all", "latency_ok", "lateness"):
            setattr(rec, name, LatencyHistogram.decode(snap[name]))
        for idx, (scheduled, sent, completed, failed, hist) in snap["seconds"].items():
            sec = rec.seconds[int(idx)] = _Second()
            sec.scheduled, sec.sent, sec.completed, sec.failed = scheduled, sent, completed, failed
            sec.hist = LatencyHistogram.decode(hist)
        return rec

    @classmethod
    def merge(cls, parts: list["Recorder"]) -> "Recorder":
        """Sum of several workers' recorders (they must share t0's second grid)."""
        out = cls(min((p.t0 for p in parts), default=0.0))
        for p in parts:
            for name in ("scheduled", "sent", "completed", "ok", "failed", "in_flight"):
                setattr(out, name, getattr(out, name) + getattr(p, name))
            out.elapsed = max(out.elapsed, p.elapsed)
            out.status.update(p.status)
            out.errors.update(p.errors)
            for kind, msg in p.error_samples.items():
                out.error_samples.setdefault(kind, msg)
            out.dropped.update(p.dropped)
            out.latency_all.merge(p.latency_all)
            out.latency_ok.merge(p.latency_ok)
            out.lateness.merge(p.lateness)
            for idx, sec in p.seconds.items():
                mine = out.seconds.setdefault(idx, _Second())
                mine.scheduled += sec.scheduled
                mine.sent += sec.sent
                mine.completed += sec.completed
                mine.failed += sec.failed
                mine.hist.merge(sec.hist)
        return out
