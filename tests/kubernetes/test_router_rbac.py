"""Least privilege of the router: a router doing its real work, with its own token, asks
the API for nothing deploy/rbac/router.yaml + the team RoleBinding would refuse, and they
grant nothing it leaves unused (but the documented exceptions below)."""

from __future__ import annotations

import aiohttp

from serving.backends.kubernetes.coordination import report_lease_name
from serving.backends.kubernetes.router_running import KubernetesRouter
from tests.kubernetes.conftest import eventually
from tests.kubernetes.rbac import Grant, apiserver, kubeconfig_with_token, refused, shipped_rbac, unused  # noqa: F401
from tests.kubernetes.router_cluster import (IRIS, NS, SYSTEM, ModelReplica, put_deployment, put_endpoint,
                                             put_replica, router_settings)
from tests.kubernetes.test_router_tls import certificate_files, put_tls_secret

ROUTER_TOKEN = "router-token"
RBAC_FILES = ("rbac/router.yaml", "samples/team-namespace.yaml")
LEASES = ("coordination.k8s.io", "v1", "leases")
CONFIG_MAPS = ("", "v1", "configmaps")
SECRETS = ("", "v1", "secrets")
# Granted, not used with the shipped flags: `--tls-secret NS/NAME` may name a Secret of a
# team namespace, read with get (its list/watch are the team rule's, used for the keys).
NOT_EXERCISED = {Grant(NS, "", "secrets", None, "get")}


async def test_the_router_asks_for_what_its_rbac_grants_and_no_more(apiserver, kubeconfig, tmp_path):
    replica = await ModelReplica().start()
    router = None
    try:
        put_tls_secret(apiserver, *certificate_files(tmp_path / "certs"))
        put_endpoint(apiserver, "iris", {"blue": 100})
        put_deployment(apiserver, "iris", "blue", limit=2)
        put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replica.port)
        # Another coordinator's write between two of ours: the router reads what is there (get).
        conflict = apiserver.fail_next("PUT", "configmaps", 409)
        settings = router_settings(kubeconfig_with_token(kubeconfig, ROUTER_TOKEN, tmp_path / "router-kubeconfig"),
                                   "router-a", tmp_path, tls_secret="scoregate-router-tls")
        router = KubernetesRouter(settings)  # coordination and shared ticket keys on, as deployed
        await router.start()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as client:
            async with client.post(f"https://127.0.0.1:{router.port}/api/v1/endpoint/iris/score",
                                   data=(IRIS / "sample-request.json").read_text(),
                                   headers={"Content-Type": "application/json",
                                            "Authorization": "Bearer primary-key-1"}) as response:
                assert response.status == 200, await response.text()
        assert apiserver.get(SECRETS, SYSTEM, "scoregate-tls-ticket-keys") is not None  # created when missing
        assert router.ticket_keys.shared
        await eventually(lambda: router.coordination.elector is not None and router.coordination.elector.is_leader
                         and conflict.hits == 1, timeout_s=20, what="the coordinator's shares write refused")
        # rounds counts finished rounds: two more, and the one that met the conflict is over
        rounds = router.coordination.rounds
        await eventually(lambda: router.coordination.rounds >= rounds + 2, timeout_s=20,
                         what="two more coordinator rounds")
        assert apiserver.get(CONFIG_MAPS, SYSTEM, "scoregate-router-shares") is not None
        assert apiserver.get(LEASES, SYSTEM, report_lease_name("router-a")) is not None
    finally:
        if router is not None:
            await router.close()  # graceful: the coordinator Lease handed over, the report withdrawn
        await replica.stop()

    made = apiserver.requests_of(ROUTER_TOKEN)
    granted = shipped_rbac(RBAC_FILES, "scoregate-router")
    assert {g.scope for g in granted} == {NS, SYSTEM}
    assert refused(granted, made) == [], "requests the RBAC in deploy/ would refuse"
    assert unused(granted, made) - NOT_EXERCISED == set(), "granted but never used"
