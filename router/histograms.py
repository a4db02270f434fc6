"""Labelled Prometheus histograms without locks, for the per-request observations.

prometheus_client's Histogram takes a lock per observation (it may be written from any
thread); the router's observations all come from its one event-loop thread, so a bucket
index and two additions are enough — about a sixth of the cost. Scrapes read the counts
in the same thread (router/app.py's /metrics handler); a read from another thread can at
worst see a count and its sum one observation apart.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class _Child:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # bucket "le": value <= bound
        self.sum += value


class LoopHistogram:
    """Same exposition as prometheus_client.Histogram (`_bucket`, `_count`, `_sum`)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...], registry) -> None:
        self._name, self._documentation = name, documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], _Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = _Child(self._bounds)
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def describe(self):
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self):
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            running, buckets = 0, []
            for bound, count in zip(self._bounds, child.counts):
                running += count
                buckets.append((floatToGoString(bound), running))
            buckets.append(("+Inf", running + child.counts[-1]))
            family.add_metric(list(values), buckets, sum_value=child.sum)
        yield family

