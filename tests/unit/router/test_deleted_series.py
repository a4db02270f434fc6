"""/metrics after an endpoint or a deployment is deleted: its request series go with it
(as the autoscaler's and the rollouts' do), so a deleted endpoint is not exported for
the rest of the gateway's life and endpoints that come and go under new names (one per
pull request, say) do not grow /metrics without bound. The others keep counting."""

from __future__ import annotations

from prometheus_client import generate_latest

from router import RouterApp, RouterSettings, RoutingTableHolder
from router.context import RequestContext
from router.routing_table import DeploymentRoute, EndpointRoute, RoutingTable


def table(version: int, **endpoints: tuple[str, ...]) -> RoutingTable:
    return RoutingTable(version, {name: EndpointRoute(name, deployments={d: DeploymentRoute(d) for d in deployments})
                                  for name, deployments in endpoints.items()})


def answer(router: RouterApp, endpoint: str, deployment: str | None, status: int = 200) -> None:
    ctx = RequestContext("id", "127.0.0.1", "POST", f"/api/v1/endpoint/{endpoint}/score")
    ctx.endpoint, ctx.deployment, ctx.status = endpoint, deployment, status
    ctx.error_code = None if status == 200 else "Unauthorized"
    router.recorder.record(ctx)
    router.recorder.queue_wait.labels(endpoint, deployment or "-").observe(0.01)


def series(router: RouterApp) -> set[tuple[str, str]]:
    text = generate_latest(router.recorder.registry).decode()
    return {(line.split('endpoint="')[1].split('"')[0], line.split('deployment="')[1].split('"')[0])
            for line in text.splitlines() if line.startswith("scoregate_") and 'endpoint="' in line
            and not line.startswith("scoregate_deployment_")}  # the levels follow the table already


def test_a_deleted_deployment_or_endpoint_takes_its_request_series_with_it():
    holder = RoutingTableHolder(table(1, shop=("blue", "green"), pr7=("main",)))
    router = RouterApp(RouterSettings(), holder)
    answer(router, "shop", "blue")
    answer(router, "shop", "green")
    answer(router, "shop", None, 401)
    answer(router, "pr7", "main")
    assert series(router) == {("shop", "blue"), ("shop", "green"), ("shop", "-"), ("pr7", "main")}

    holder.swap(table(2, shop=("blue",), pr7=("main",)))  # green deleted
    assert series(router) == {("shop", "blue"), ("shop", "-"), ("pr7", "main")}
    holder.swap(table(3, shop=("blue",)))  # endpoint pr7 deleted
    assert series(router) == {("shop", "blue"), ("shop", "-")}

    answer(router, "shop", "blue")  # the others keep their counts
    assert router.recorder.registry.get_sample_value(
        "scoregate_requests_total", {"endpoint": "shop", "deployment": "blue", "status": "200", "code": ""}) == 2
