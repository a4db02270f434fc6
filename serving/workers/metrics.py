"""The workers' metrics on the main process's admin port, each series with a `worker` label.

Each worker keeps its own registry (its data path must not share a lock with anyone).
The main process asks every worker for its exposition text, parses it back into metric
families and serves them together with its own control-plane metrics: one family per
name, a sample per worker. Sums across workers are a query away
(`sum without (worker) (...)`).
"""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def merge_worker_metrics(texts: dict[int, bytes]) -> list[Metric]:
    """Families from every worker's exposition text, labelled with the worker's index."""
    merged: dict[str, Metric] = {}
    for index in sorted(texts):
        worker = str(index)
        for family in text_string_to_metric_families(texts[index].decode("utf-8")):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                target.samples.append(sample._replace(labels={**sample.labels, "worker": worker}))
    return list(merged.values())


class WorkerMetrics(Collector):
    """Serves the last merged scrape (refreshed by WorkerPool before each /metrics)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self):
        return list(self.families)
