"""Observed replicas + desired endpoints → a RoutingTable for the router.

`build_routing_table` is pure; RoutingPublisher keeps the version counter and swaps the
new table into the router's RoutingTableHolder only when something a request could
notice changed. Only READY replicas are published: a replica that is starting, stopping
or exited is never offered to a request.
"""

from __future__ import annotations

from typing import Mapping

from router import (
    DeploymentRoute,
    EndpointRoute,
    Replica,
    RequestSettings,
    RoutingTable,
    RoutingTableHolder,
)

from ..backends import READY, ReplicaView
from ..resources import Deployment
from ..store import EndpointRecord


def build_routing_table(version: int, records: list[EndpointRecord], deployments: list[Deployment],
                        replicas: list[ReplicaView],
                        traffic: dict[str, tuple[dict[str, int], str | None]] | None = None,
                        failed: Mapping[tuple[str, str], str] | None = None) -> RoutingTable:
    """`traffic`: per endpoint, the weights in effect and why none are (if so); by
    default the endpoint's desired traffic. `failed`: per (endpoint, deployment) whose
    only version failed to roll out, why (said to a request pinned to it)."""
    ready: dict[tuple[str, str], list[Replica]] = {}
    for view in replicas:
        if view.state == READY:
            ready.setdefault((view.endpoint, view.deployment), []).append(
                Replica(view.replica_id, view.host, view.port, scoring_path=view.scoring_path,
                        liveness_path=view.liveness_path, scheme=view.scheme))
    by_endpoint: dict[str, dict[str, DeploymentRoute]] = {}
    for deployment in deployments:
        settings = deployment.request_settings
        route = DeploymentRoute(
            name=deployment.name,
            replicas=tuple(sorted(ready.get((deployment.endpoint_name, deployment.name), []),
                                  key=lambda r: r.replica_id)),
            request_settings=RequestSettings(
                request_timeout_ms=settings.request_timeout_ms,
                max_concurrent_requests_per_instance=settings.max_concurrent_requests_per_instance,
                max_queue_wait_ms=settings.max_queue_wait_ms,
            ),
            unavailable_reason=(failed or {}).get((deployment.endpoint_name, deployment.name)),
        )
        by_endpoint.setdefault(deployment.endpoint_name, {})[deployment.name] = route
    endpoints = {}
    for record in records:
        endpoint = record.endpoint
        routes = by_endpoint.get(endpoint.name, {})
        weights, unavailable = (traffic or {}).get(endpoint.name, (endpoint.traffic, None))
        endpoints[endpoint.name] = EndpointRoute(
            name=endpoint.name,
            auth_mode=endpoint.auth_mode,
            keys=(record.primary_key, record.secondary_key),
            traffic=tuple((n, w) for n, w in sorted(weights.items()) if w > 0 and n in routes),
            unavailable_reason=unavailable,
            mirror_traffic=tuple((n, p) for n, p in sorted(endpoint.mirror_traffic.items())
                                 if p > 0 and n in routes),
            rate_limit=((endpoint.rate_limit["requests_per_second"], endpoint.rate_limit["burst"])
                        if endpoint.rate_limit else None),
            deployments=routes,
        )
    return RoutingTable(version=version, endpoints=endpoints)


class RoutingPublisher:
    """Publishes tables, and holds each endpoint's traffic in effect.

    A traffic change takes effect, whole and at once, only when every deployment it
    gives weight to has a version that serves (its rollout succeeded once); until then
    the previous weights stay in effect. An endpoint with nothing in effect yet answers
    503 with the reason (its deployments are still rolling out, or failed).
    """

    def __init__(self, holder: RoutingTableHolder) -> None:
        self._holder = holder
        self._in_effect: dict[str, dict[str, int]] = {}

    def traffic_in_effect(self, records: list[EndpointRecord],
                          available: set[tuple[str, str]] | None) -> dict[str, tuple[dict[str, int], str | None]]:
        out = {}
        for record in records:
            endpoint = record.endpoint
            wanted = {n: w for n, w in endpoint.traffic.items() if w > 0}
            if available is None or all((endpoint.name, n) in available for n in wanted):
                self._in_effect[endpoint.name] = wanted
                out[endpoint.name] = (wanted, None)
                continue
            kept = {n: w for n, w in self._in_effect.get(endpoint.name, {}).items()
                    if (endpoint.name, n) in available}
            waiting = sorted(n for n in wanted if (endpoint.name, n) not in available)
            reason = None if kept else (f"endpoint '{endpoint.name}' has no deployment ready for traffic yet: "
                                        f"{', '.join(waiting)} not rolled out")
            out[endpoint.name] = (kept, reason)
        for name in [n for n in self._in_effect if n not in {r.endpoint.name for r in records}]:
            del self._in_effect[name]
        return out

    def publish(self, records: list[EndpointRecord], deployments: list[Deployment],
                replicas: list[ReplicaView], available: set[tuple[str, str]] | None = None,
                failed: Mapping[tuple[str, str], str] | None = None) -> bool:
        """Swap in a new table if it differs from the current one; True if swapped."""
        current = self._holder.current
        table = build_routing_table(current.version + 1, records, deployments, replicas,
                                    self.traffic_in_effect(records, available), failed)
        if current.version > 0 and table.endpoints == current.endpoints:
            return False
        self._holder.swap(table)
        return True
