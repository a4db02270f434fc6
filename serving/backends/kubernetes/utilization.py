"""ClusterUtilization: the autoscaler's signal on a cluster, summed over every router.

Each router admits on its own, so no single router's load says how busy a deployment is.
The routers' coordinator (coordination.py) already sums their time-averaged
(in flight + queued) per deployment into ConfigMap `scoregate-router-shares`
(`deployments["ENDPOINT/DEPLOYMENT"].level`), counting only routers whose report Lease is
live (10 s), and rewrites it at least every few seconds. The controller watches that one
ConfigMap by name and hands `level` to serving.controller.autoscaling as the interval's
average — the same input the embedded gateway gets from its one router.

Age bounds: the document is dated by our own clock when its version changes (as
coordination.py dates report Leases, so clock skew between pods does not matter). A
document unchanged for `max_age_s` — every router gone, or no coordinator for that long —
counts as no load, so a load that stopped being reported cannot hold replicas up forever
(the policy then scales down as conservatively as always). No document at all — routers
that never coordinated — is no signal, and the autoscaler decides nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from .api import CONFIG_MAPS, KubeApi
from .coordination import SHARES_CONFIG_MAP, SHARES_KEY
from .shares import SharesDoc
from .watching import ObjectCache

log = logging.getLogger("scoregate.kubernetes.utilization")
DEFAULT_MAX_AGE_S = 30.0  # the coordinator writes every 5 s; a take-over needs about 6 s


@dataclass(frozen=True)
class ClusterSample:
    """What the autoscaling loop reads (the shape of router.admission.UtilizationWindow)."""

    average_level: float  # sum over routers of the time-averaged in flight + queued
    window_s: float  # age of the document it came from
    routers: int
    stale: bool = False


class ClusterUtilization:
    def __init__(self, api: KubeApi, namespace: str, *, max_age_s: float = DEFAULT_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic, watch_timeout_s: int = 300) -> None:
        self.namespace, self.max_age_s, self._clock = namespace, max_age_s, clock
        self._cache = ObjectCache(api, CONFIG_MAPS, namespaces=[namespace], on_event=self._on_event,
                                  field_selector=f"metadata.name={SHARES_CONFIG_MAP}",  # RBAC: by name only
                                  watch_timeout_s=watch_timeout_s)
        self._doc: SharesDoc | None = None
        self._seen_at = 0.0
        self._stale_logged = False

    async def start(self, timeout_s: float = 60.0) -> None:
        await self._cache.start(timeout_s)
        self._on_event("", {})

    async def close(self) -> None:
        await self._cache.close()

    def _on_event(self, _kind: str, _obj: dict) -> None:
        try:
            doc = SharesDoc.from_config_map(self._cache.get(self.namespace, SHARES_CONFIG_MAP), SHARES_KEY)
        except ValueError as exc:  # the last good document stays
            log.warning("ConfigMap %s/%s: %s", self.namespace, SHARES_CONFIG_MAP, exc)
            return
        if doc is None:
            self._doc = None
            return
        if self._doc is None or doc.version != self._doc.version or doc.coordinator != self._doc.coordinator:
            self._seen_at, self._stale_logged = self._clock(), False
        self._doc = doc

    def sample(self, endpoint: str, deployment: str) -> ClusterSample | None:
        """The summed level of one deployment; None while no router has published any."""
        doc = self._doc
        if doc is None:
            return None
        age = self._clock() - self._seen_at
        if age > self.max_age_s:
            if not self._stale_logged:
                log.warning("ConfigMap %s/%s (routers' utilization) unchanged for %.0f s: counting no load",
                            self.namespace, SHARES_CONFIG_MAP, age)
                self._stale_logged = True
            return ClusterSample(0.0, age, 0, stale=True)
        shares = doc.deployments.get(f"{endpoint}/{deployment}")
        return ClusterSample(shares.level if shares else 0.0, age, len(doc.routers))
