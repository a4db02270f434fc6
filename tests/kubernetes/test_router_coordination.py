"""Several routers, one coordinator: election and take-over on the Lease, slot shares
written to the shares ConfigMap, and the per-replica limit held across routers.

Honest scope: the routers are KubernetesRouter objects in this one process (each with its
own API client, RouterApp listener, watches, report Lease and elector), not separate
processes; what they share is only what separate pods share — the API server."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from serving.backends.kubernetes.coordination import COORDINATOR_LEASE, SHARES_CONFIG_MAP, SHARES_KEY
from serving.backends.kubernetes.router_running import KubernetesRouter
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import (FAST, NS, SYSTEM, CountingUpstream, put_deployment, put_endpoint,
                                             put_replica, replicas_in, router_settings, share_of)

HEADERS = {"Authorization": "Bearer primary-key-1", "Content-Type": "application/json"}


@pytest.fixture
async def routers(kubeconfig, tmp_path):
    started: list[KubernetesRouter] = []

    async def make(identity: str) -> KubernetesRouter:
        router = KubernetesRouter(router_settings(kubeconfig, identity, tmp_path))
        await router.start()
        started.append(router)
        return router

    yield make
    for router in started:
        await router.close(graceful=False)


def coordinators(routers):
    return [r for r in routers if r.coordination.is_coordinator]


def shares_doc(apiserver) -> dict:
    config_map = apiserver.get(("", "v1", "configmaps"), SYSTEM, SHARES_CONFIG_MAP)
    return json.loads(config_map["data"][SHARES_KEY]) if config_map else {}


def decided_for_all(routers, key: str) -> bool:
    """Every router's table comes from a doc that deals this deployment out among all of them."""
    names = {r.identity for r in routers}
    return all(r.tables.doc is not None and set(r.tables.doc.routers) == names
               and r.tables.doc.grants_for(r.identity, key) is not None for r in routers)


async def test_one_coordinator_deals_replicas_out_and_another_takes_over(apiserver, routers):
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=1)  # the default: fewer slots per replica than routers
    for index in range(3):
        put_replica(apiserver, "iris", "blue", f"pod-{index}", 20000 + index)
    a, b, c = [await routers(name) for name in ("router-a", "router-b", "router-c")]
    everyone = [a, b, c]
    await eventually(lambda: len(coordinators(everyone)) == 1)
    await eventually(lambda: decided_for_all(everyone, "iris/blue"))
    await eventually(lambda: all(len(replicas_in(r, "iris", "blue")) == 1 for r in everyone))
    held = [replicas_in(r, "iris", "blue")[0] for r in everyone]
    assert sorted(held) == [f"{NS}/pod-{i}" for i in range(3)]  # one replica each, never shared
    assert all(share_of(r, "iris", "blue") == 1 for r in everyone)
    first = coordinators(everyone)[0]
    assert shares_doc(apiserver)["coordinator"] == first.identity
    lease = apiserver.get(("coordination.k8s.io", "v1", "leases"), SYSTEM, COORDINATOR_LEASE)
    assert lease["spec"]["holderIdentity"] == first.identity

    loop = asyncio.get_running_loop()
    crashed_at = loop.time()
    await first.close(graceful=False)  # a crash: no Lease hand-over, the report is left to expire
    survivors = [r for r in everyone if r is not first]
    second = (await eventually(lambda: coordinators(survivors), timeout_s=5))[0]
    took = loop.time() - crashed_at
    assert FAST["lease_duration_s"] * 0.9 <= took <= FAST["lease_duration_s"] + 2.0
    await eventually(lambda: shares_doc(apiserver)["coordinator"] == second.identity)
    await eventually(lambda: decided_for_all(survivors, "iris/blue"), timeout_s=5)  # the crashed one is gone
    await eventually(lambda: sorted(x for r in survivors for x in replicas_in(r, "iris", "blue"))
                     == [f"{NS}/pod-{i}" for i in range(3)])  # its replica was dealt out again


async def _load(client: aiohttp.ClientSession, port: int, until: asyncio.Event, outcomes: list) -> None:
    url = f"https://127.0.0.1:{port}/api/v1/endpoint/iris/score"
    while not until.is_set():
        try:
            async with client.post(url, data=b'{"data": [[1, 2, 3, 4]]}', headers=HEADERS) as response:
                await response.read()
                outcomes.append((asyncio.get_running_loop().time(), response.status))
                if response.status != 200:
                    await asyncio.sleep(0.01)
        except aiohttp.ClientError:
            outcomes.append((asyncio.get_running_loop().time(), 0))
            await asyncio.sleep(0.01)


async def test_the_limit_holds_across_routers_and_survives_the_coordinator(apiserver, routers):
    upstream = await CountingUpstream(delay_s=0.03).start()
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=2, max_queue_wait_ms=200)
    put_replica(apiserver, "iris", "blue", "pod-0", upstream.port)
    a = await routers("router-a")
    await eventually(lambda: a.coordination.is_coordinator)
    b = await routers("router-b")
    await eventually(lambda: decided_for_all([a, b], "iris/blue"))
    await eventually(lambda: share_of(a, "iris", "blue") == 1 and share_of(b, "iris", "blue") == 1)
    # the tables from before the grants (router-a's solo share of 2, router-b's first guess)
    # are past settle_s: neither router still counts on more than its one slot
    await eventually(lambda: all(r.tables.allowed().get("iris/blue") == {f"{NS}/pod-0": 1} for r in (a, b)),
                     what="only the grants allowed", context=lambda: str([r.tables.allowed() for r in (a, b)]))
    upstream.peak = 0
    a_outcomes, b_outcomes = [], []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, limit=0)) as client:
            stop_a, stop_b = asyncio.Event(), asyncio.Event()
            workers = [asyncio.create_task(_load(client, a.port, stop_a, a_outcomes)) for _ in range(8)]
            workers += [asyncio.create_task(_load(client, b.port, stop_b, b_outcomes)) for _ in range(8)]
            await asyncio.sleep(1.5)  # the load runs a while: the limit under load is what is checked
            assert upstream.peak == 2  # both routers together used the replica fully, never more
            doc = shares_doc(apiserver)["deployments"]["iris/blue"]
            assert doc["grants"] == {"router-a": [1], "router-b": [1]} and doc["level"] > 1.0

            stop_a.set()
            loop = asyncio.get_running_loop()
            crashed_at = loop.time()
            await a.close(graceful=False)  # the coordinator dies under load
            await eventually(lambda: b.coordination.is_coordinator, timeout_s=5)
            await eventually(lambda: share_of(b, "iris", "blue") == 2, timeout_s=5)  # a's slot is b's now
            await asyncio.sleep(0.5)  # router-b alone under load a while: its answers are checked below
            stop_b.set()
            await asyncio.gather(*workers)
    finally:
        await upstream.close()
    assert upstream.peak <= 2
    ok_a = sum(1 for _, status in a_outcomes if status == 200)
    assert ok_a > 10 and sum(1 for _, status in b_outcomes if status == 200) > 10
    after = [(t, s) for t, s in b_outcomes if t > crashed_at]
    assert after and all(s in (200, 429) for _, s in after)  # refused only when busy, never for the coordinator
    window = 0.5  # generous for a busy machine; the Lease alone takes 1 s to expire
    for start in [crashed_at + window * i for i in range(int((after[-1][0] - crashed_at) / window))]:
        assert any(s == 200 and start <= t < start + window for t, s in after), "requests stopped flowing"
