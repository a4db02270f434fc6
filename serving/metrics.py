"""Control-plane metrics, registered in the same registry as the router's (one /metrics).

    scoregate_replica_restarts_total{endpoint,deployment}      replicas started to replace exited ones
                                                               (each is +1 to the replacement's `restarts`)
    scoregate_rollouts_total{endpoint,deployment,outcome}      finished rollouts: succeeded | failed
    scoregate_rollout_failed{endpoint,deployment}              1 while the latest rollout has failed

A deleted deployment's series go with it (forget), as the autoscaler's do: a failed
rollout of a deployment that no longer exists must not keep an alert firing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.replica_restarts = Counter(
            "scoregate_replica_restarts", "Replicas started to replace ones that exited.",
            ("endpoint", "deployment"), registry=registry)
        self.rollouts = Counter(
            "scoregate_rollouts", "Finished rollouts by outcome (succeeded, failed).",
            ("endpoint", "deployment", "outcome"), registry=registry)
        self.rollout_failed = Gauge(
            "scoregate_rollout_failed", "1 while the latest rollout of a deployment has failed.",
            ("endpoint", "deployment"), registry=registry)

    def rollout_finished(self, key: tuple[str, str], succeeded: bool) -> None:
        self.rollouts.labels(key[0], key[1], "succeeded" if succeeded else "failed").inc()
        self.rollout_failed.labels(*key).set(0 if succeeded else 1)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop the series of a deleted deployment."""
        for metric, labels in ((self.replica_restarts, key), (self.rollout_failed, key),
                               (self.rollouts, (*key, "succeeded")), (self.rollouts, (*key, "failed"))):
            try:
                metric.remove(*labels)
            except KeyError:
                pass
