"""Latency histograms that keep the tail honest and merge across processes.

Keeping every sample to sort later costs memory proportional to the run and
cannot be merged cheaply between worker processes.  An HDR histogram keeps a
fixed array of buckets with 3 significant digits from 1 µs to 60 s, so p99.9
and max are exact to 0.1 %, two histograms merge by adding counts, and the
encoded form is a short ASCII string that pickles and fits in JSON.
"""

from __future__ import annotations

from typing import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _pkey(p: float) -> str:
    """'p50', 'p99', 'p99.9': stable names for JSON and tables."""
    return "p" + (f"{p:g}")


class LatencyHistogram:
    """Latencies in microseconds; values above 60 s are clamped and counted."""

    __slots__ = ("_h", "overflow")

    def __init__(self, significant_digits: int = 3) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, significant_digits)
        self.overflow = 0

    # -- recording -------------------------------------------------------
    def record_us(self, value_us: float, count: int = 1) -> None:
        v = int(value_us)
        if v < 0:
            v = 0
        elif v > HIGHEST_US:
            v = HIGHEST_US
            self.overflow += count
        self._h.record_value(v, count)

    def record_seconds(self, seconds: float, count: int = 1) -> None:
        self.record_us(seconds * 1e6, count)

    # -- reading ---------------------------------------------------------
    @property
    def count(self) -> int:
        return self._h.get_total_count()

    def percentile_us(self, p: float) -> int:
        return self._h.get_value_at_percentile(p) if self.count else 0

    def percentile_ms(self, p: float) -> float:
        return self.percentile_us(p) / 1000.0

    @property
    def max_us(self) -> int:
        return self._h.get_max_value() if self.count else 0

    @property
    def min_us(self) -> int:
        return self._h.get_min_value() if self.count else 0

    @property
    def mean_us(self) -> float:
        return self._h.get_mean_value() if self.count else 0.0

    def summary(self) -> dict:
        """Count, mean, percentiles and max in milliseconds."""
        out = {"count": self.count, "mean_ms": round(self.mean_us / 1000.0, 3),
               "min_ms": self.min_us / 1000.0}
        for p in PERCENTILES:
            out[_pkey(p) + "_ms"] = self.percentile_ms(p)
        out["max_ms"] = self.max_us / 1000.0
        if self.overflow:
            out["overflow"] = self.overflow
        return out

    def cdf_points(self) -> list[tuple[float, float]]:
        """(latency ms, fraction of requests at or below it) per recorded bucket."""
        total = self.count
        if not total:
            return []
        points = []
        for item in self._h.get_recorded_iterator():
            v = self._h.get_highest_equivalent_value(item.value_iterated_to)
            points.append((v / 1000.0, item.total_count_to_this_value / total))
        return points

    # -- combining and transport -----------------------------------------
    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        """Add another histogram's counts into this one (returns self)."""
        if other.count:
            self._h.add(other._h)
        self.overflow += other.overflow
        return self

    @classmethod
    def merged(cls, parts: Iterable["LatencyHistogram"],
               significant_digits: int = 3) -> "LatencyHistogram":
        out = cls(significant_digits)
        for part in parts:
            out.merge(part)
        return out

    def encode(self) -> str:
        """Compressed base64 text (HdrHistogram's own wire format) + overflow."""
        text = self._h.encode().decode("ascii")
        return f"{text}~{self.overflow}" if self.overflow else text

    @classmethod
    def decode(cls, text: str) -> "LatencyHistogram":
        payload, _, overflow = text.partition("~")
        out = cls.__new__(cls)
        out._h = HdrHistogram.decode(payload.encode("ascii"))
        out.overflow = int(overflow) if overflow else 0
        return out

    def __repr__(self) -> str:
        return (f"LatencyHistogram(count={self.count}, p50={self.percentile_ms(50)}ms, "
                f"p99={self.percentile_ms(99)}ms, max={self.max_us / 1000.0}ms)")
