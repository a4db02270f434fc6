"""An in-process router with real TLS in front of real upstream servers on 127.0.0.1.

Used by the router functional tests; every router is checked on teardown: nothing in
flight, nobody queued.
"""

from __future__ import annotations

import aiohttp

from router import (DeploymentRoute, EndpointRoute, Replica, RequestSettings, RouterApp, RouterSettings,
                    RoutingTable)

KEY = "k" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}


def deployment(name: str, ports: list[int], **settings) -> DeploymentRoute:
    replicas = tuple(Replica(f"{name}-{i}", "127.0.0.1", port) for i, port in enumerate(ports))
    return DeploymentRoute(name, replicas, RequestSettings(**settings))


def table(*deployments: DeploymentRoute, traffic=None, version: int = 1, rate_limit=None) -> RoutingTable:
    traffic = traffic or ((deployments[0].name, 100),)
    endpoint = EndpointRoute("ep", keys=(KEY,), traffic=tuple(traffic), rate_limit=rate_limit,
                             deployments={d.name: d for d in deployments})
    return RoutingTable(version=version, endpoints={"ep": endpoint})


def url(router: RouterApp, tail: str = "score") -> str:
    return f"https://127.0.0.1:{router.port}/api/v1/endpoint/ep/{tail}"


def assert_idle(router: RouterApp) -> None:
    assert router.in_flight.total() == 0, "requests still counted in flight"
    for endpoint in router.holder.current.endpoints.values():
        for name in endpoint.deployments:
            assert router.admission.queued((endpoint.name, name)) == 0, "requests still queued"


async def post(client: aiohttp.ClientSession, router: RouterApp, body: bytes = b"{}", headers=None):
    async with client.post(url(router), data=body, headers={**AUTH, **(headers or {})}) as r:
        return r.status, r.headers, await r.read()
