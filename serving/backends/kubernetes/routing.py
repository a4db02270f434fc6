"""RouterTables: this router's RoutingTable, from the cluster view and its slot grants.

The table is the one the embedded gateway builds (serving.controller.publisher), with one
change per deployment: `max_concurrent_requests_per_instance` becomes this router's
share, so router.admission enforces the cluster-wide limit with no change to router/:
- granted slots on some replicas: only those replicas, at the smallest granted count
  (grants are uniform per router except while a hand-over is under way);
- the coordinator decided this router gets no slot now (fewer slots than routers): the
  replicas with 0 slots, so requests wait briefly in the queue and then get 429, and the
  waiting shows up as demand in the next report;
- nothing decided for this router (no coordinator yet, a new router or deployment):
  ceil(limit / routers seen) on every ready replica — degraded, never refusing for that.
A replica the coordinator has not dealt out yet is left out while others have grants.
It also remembers, for `settle_s` after each swap, what the previous tables allowed: a
request that read the old snapshot may still be admitted under it (routing_table.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

from router import DeploymentRoute, RoutingTable, RoutingTableHolder

from ...controller.publisher import RoutingPublisher, build_routing_table
from .discovery import ClusterView
from .shares import SharesDoc

Allowed = dict[str, dict[str, int]]  # "endpoint/deployment" -> replica -> slots


def deployment_key(endpoint: str, deployment: str) -> str:
    return f"{endpoint}/{deployment}"


def shared_route(route: DeploymentRoute, key: str, doc: SharesDoc | None, me: str,
                 routers_seen: int) -> DeploymentRoute:
    settings = route.request_settings
    limit = settings.max_concurrent_requests_per_instance
    grants = doc.grants_for(me, key) if doc is not None else None
    decided = [r for r in route.replicas if grants is not None and r.replica_id in grants]
    if not decided:
        share, replicas = math.ceil(limit / max(1, routers_seen)), route.replicas
    else:
        positive = [r for r in decided if grants[r.replica_id] > 0]
        replicas = tuple(positive or decided)
        share = min(limit, min(grants[r.replica_id] for r in positive)) if positive else 0
    return replace(route, replicas=tuple(replicas),
                   request_settings=replace(settings, max_concurrent_requests_per_instance=share))


def allowed_by(table: RoutingTable) -> Allowed:
    return {deployment_key(e.name, d.name): {r.replica_id: d.request_settings.max_concurrent_requests_per_instance
                                             for r in d.replicas}
            for e in table.endpoints.values() for d in e.deployments.values()}


class RouterTables:
    def __init__(self, holder: RoutingTableHolder, identity: str, *, settle_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.holder, self.identity = holder, identity
        self._publisher = RoutingPublisher(holder)  # only for its "traffic in effect" memory
        self._settle_s, self._clock = settle_s, clock
        self.view = ClusterView()
        self.doc: SharesDoc | None = None
        self.routers_seen = 1
        self.seen = 0  # the version of the shares doc the current table was built with
        self._retired: list[tuple[float, Allowed]] = []
        self.built = False

    def update(self, *, view: ClusterView | None = None, doc: SharesDoc | None = None,
               routers_seen: int | None = None) -> bool:
        """Rebuild with what changed; swap (and return True) if a request could notice."""
        if self.built and view is None and doc is None and routers_seen in (None, self.routers_seen):
            return False  # e.g. a peer's report arrived: nothing this table depends on changed
        self.view = view if view is not None else self.view
        self.doc = doc if doc is not None else self.doc
        self.routers_seen = routers_seen if routers_seen is not None else self.routers_seen
        current = self.holder.current
        records, deployments = list(self.view.records), list(self.view.deployments)
        traffic = self._publisher.traffic_in_effect(records, set(self.view.available))
        table = build_routing_table(current.version + 1, records, deployments, list(self.view.replicas), traffic,
                                    self.view.failed)
        endpoints = {name: replace(endpoint, deployments={
            n: shared_route(d, deployment_key(name, n), self.doc, self.identity, self.routers_seen)
            for n, d in endpoint.deployments.items()}) for name, endpoint in table.endpoints.items()}
        self.seen = self.doc.version if self.doc is not None else 0
        if self.built and endpoints == current.endpoints:
            return False
        self._retired.append((self._clock(), allowed_by(current)))
        self.holder.swap(RoutingTable(version=current.version + 1, endpoints=endpoints))
        self.built = True
        return True

    def allowed(self) -> Allowed:
        """The most each replica may get from this router: now, or under a table retired
        less than settle_s ago."""
        horizon = self._clock() - self._settle_s
        self._retired = [(t, a) for t, a in self._retired if t >= horizon]
        out: Allowed = {}
        for allowed in [a for _, a in self._retired] + [allowed_by(self.holder.current)]:
            for key, replicas in allowed.items():
                mine = out.setdefault(key, {})
                for replica, slots in replicas.items():
                    mine[replica] = max(mine.get(replica, 0), slots)
        return out
