"""The router on Kubernetes: routing state from the API, replicas from EndpointSlices that
point at real model server processes, keys from Secrets, traffic gated by rollout status.

Routers run in this process (KubernetesRouter, the object run_router() drives), talking to
the emulated API server over HTTP with the real kubernetes-asyncio client."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import aiohttp
import pytest

from serving.backends.kubernetes.router_running import KubernetesRouter, run_router
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import (IRIS, NS, ModelReplica, put_deployment, put_endpoint, put_keys,
                                             put_replica, remove_replica, replicas_in, router_settings,
                                             set_rolled_out)

SAMPLE = (IRIS / "sample-request.json").read_text()


@pytest.fixture
async def replicas():
    started = await asyncio.gather(ModelReplica().start(), ModelReplica().start())
    yield started
    await asyncio.gather(*(r.stop() for r in started))


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        yield session


async def score(client, port: int, key: str | None = "primary-key-1", endpoint: str = "iris", **headers):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with client.post(f"https://127.0.0.1:{port}/api/v1/endpoint/{endpoint}/score", data=SAMPLE,
                           headers={"Content-Type": "application/json", **headers}) as response:
        return response.status, await response.read(), response.headers


async def test_scoring_follows_the_endpoint_slices(apiserver, kubeconfig, tmp_path, replicas, client):
    first, second = replicas
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=4)
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", first.port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        assert replicas_in(router, "iris", "blue") == [f"{NS}/iris-blue-pod-1"]
        status, body, headers = await score(client, router.port)
        assert status == 200, body
        assert json.loads(body)["predictions"]
        assert headers["azureml-model-deployment"] == "blue"

        put_replica(apiserver, "iris", "blue", "iris-blue-pod-2", second.port)  # scale-up: a new ready pod
        await eventually(lambda: len(replicas_in(router, "iris", "blue")) == 2)
        put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", first.port, ready=False)  # terminating
        await eventually(lambda: replicas_in(router, "iris", "blue") == [f"{NS}/iris-blue-pod-2"])
        await first.stop()
        for _ in range(5):  # every request reaches the pod that is left
            status, body, _ = await score(client, router.port)
            assert status == 200, body
        remove_replica(apiserver, "iris", "blue", "iris-blue-pod-2")
        await eventually(lambda: replicas_in(router, "iris", "blue") == [])
        status, body, headers = await score(client, router.port)
        assert status == 503 and json.loads(body)["code"] == "NoReadyReplica"
        assert "Retry-After" in headers
    finally:
        await router.close()



async def test_a_deployment_refused_for_another_ones_service_name_takes_none_of_its_replicas(
        apiserver, kubeconfig, tmp_path, replicas, client):
    """iris/ab-cd and iris-ab/cd would both have Service iris-ab-cd: the older keeps it, as the
    controller decides, so iris's replicas stay iris's (not the younger's: iris would get 503)."""
    put_endpoint(apiserver, "iris", {"ab-cd": 100})
    put_deployment(apiserver, "iris", "ab-cd")
    put_endpoint(apiserver, "iris-ab", {"cd": 100})
    put_deployment(apiserver, "iris-ab", "cd", obj="iris-ab-cd-2", rolled_out=False)  # Failed, by the controller
    put_replica(apiserver, "iris", "ab-cd", "iris-ab-cd-pod-1", replicas[0].port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        assert replicas_in(router, "iris", "ab-cd") == [f"{NS}/iris-ab-cd-pod-1"]
        assert replicas_in(router, "iris-ab", "cd") == []
        status, body, headers = await score(client, router.port)
        assert status == 200 and headers["azureml-model-deployment"] == "ab-cd", body
    finally:
        await router.close()

async def test_keys_come_from_the_secret(apiserver, kubeconfig, tmp_path, replicas, client):
    put_endpoint(apiserver, "iris", {"blue": 100}, keys=None)
    put_deployment(apiserver, "iris", "blue")
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replicas[0].port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        status, _, _ = await score(client, router.port)
        assert status == 404  # no keys Secret yet: the endpoint is not served, as in the store
        put_keys(apiserver, "iris", ("primary-key-1", "secondary-key-1"))
        await eventually(lambda: "iris" in router.router.holder.current.endpoints)
        assert (await score(client, router.port))[0] == 200
        assert (await score(client, router.port, key="secondary-key-1"))[0] == 200
        assert (await score(client, router.port, key="wrong"))[0] == 401
        assert (await score(client, router.port, key=None))[0] == 401
        put_keys(apiserver, "iris", ("primary-key-2", "secondary-key-1"))  # regenerate the primary key
        await eventually(lambda: router.router.holder.current.endpoints["iris"].keys[0] == "primary-key-2")
        assert (await score(client, router.port))[0] == 401
        assert (await score(client, router.port, key="primary-key-2"))[0] == 200
        assert (await score(client, router.port, key="secondary-key-1"))[0] == 200
    finally:
        await router.close()


async def test_aml_tokens_are_checked_with_the_stores_signing_secret(apiserver, kubeconfig, tmp_path, replicas,
                                                                     client):
    from serving.tokens import TokenIssuer

    put_endpoint(apiserver, "iris", {"blue": 100}, auth_mode="aml_token")
    put_deployment(apiserver, "iris", "blue")
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replicas[0].port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        token = TokenIssuer("signing-secret").issue("iris")["accessToken"]
        assert (await score(client, router.port, key=token))[0] == 401  # no signing secret yet
        apiserver.create(("", "v1", "secrets"), {  # what KubernetesStore.secret("aml_token") creates
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "scoregate-secrets", "namespace": NS},
            "data": {"aml_token": base64.b64encode(b"signing-secret").decode()}})
        await eventually(lambda: router.discovery.verify_token("iris", token.encode()))
        assert (await score(client, router.port, key=token))[0] == 200
        assert (await score(client, router.port, key=TokenIssuer("other").issue("iris")["accessToken"]))[0] == 401
        assert (await score(client, router.port, key="primary-key-1"))[0] == 401  # keys do not open aml_token
    finally:
        await router.close()


async def test_unreadable_secret_content_never_stops_routing(apiserver, kubeconfig, tmp_path, replicas, client):
    """An operator's `kubectl create secret generic scoregate-secrets --from-file=aml_token=<(openssl rand 32)`
    (bytes, not text) or a keys Secret edited by hand to hold bytes: the router still starts
    and keeps following the cluster (a new replica is routed); an unreadable signing key
    opens no token, and an endpoint whose keys became unreadable keeps its last readable
    keys, as a refused edit keeps the last valid version."""
    from serving.tokens import TokenIssuer

    garbage = base64.b64encode(b"\xff\xfe\x00 not text \x80").decode()
    apiserver.create(("", "v1", "secrets"), {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "scoregate-secrets", "namespace": NS}, "data": {"aml_token": garbage}})
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_endpoint(apiserver, "tokens", {"blue": 100}, auth_mode="aml_token")
    put_deployment(apiserver, "iris", "blue", limit=4)
    put_deployment(apiserver, "tokens", "blue", limit=4)
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replicas[0].port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()  # used to fail: UnicodeDecodeError
    try:
        assert (await score(client, router.port))[0] == 200
        token = TokenIssuer("anything").issue("tokens")["accessToken"]
        assert (await score(client, router.port, key=token, endpoint="tokens"))[0] == 401
        apiserver.update(("", "v1", "secrets"), NS, "scoregate-keys-iris",
                         lambda s: s["data"].__setitem__("primaryKey", garbage))
        put_replica(apiserver, "iris", "blue", "iris-blue-pod-2", replicas[1].port)  # the cluster moves on
        await eventually(lambda: len(replicas_in(router, "iris", "blue")) == 2, what="the new replica routed")
        assert (await score(client, router.port))[0] == 200  # the last readable keys
        apiserver.update(("", "v1", "secrets"), NS, "scoregate-secrets", lambda s: s.__setitem__(
            "data", {"aml_token": base64.b64encode(b"signing-secret").decode()}))
        token = TokenIssuer("signing-secret").issue("tokens")["accessToken"]
        await eventually(lambda: router.discovery.verify_token("tokens", token.encode()), what="the fixed key")
    finally:
        await router.close()


async def test_discovery_lists_every_kind_at_once_and_names_all_it_could_not_list(apiserver, kube_api):
    """Two RoleBindings missing (OnlineEndpoints and EndpointSlices refused): the router
    stops with an error naming the kinds and namespaces (it once was a bare "TimeoutError:",
    the CLI's one line). The watches used to start one after another, each waiting its own
    timeout, and the error named the first kind only (fix it, restart, wait again, learn of
    the next). They start together: both kinds were asked for before the one timeout ran
    out, and the error names both."""
    from serving.backends.kubernetes.discovery import ClusterDiscovery

    endpoints = apiserver.fail_next("GET", "onlineendpoints", 403, times=1000)
    slices = apiserver.fail_next("GET", "endpointslices", 403, times=1000)
    discovery = ClusterDiscovery(kube_api, namespaces=(NS,), sync_timeout_s=0.5)
    try:
        with pytest.raises(TimeoutError) as refused:
            await discovery.start()
    finally:
        await discovery.close()
    assert endpoints.hits and slices.hits  # the later kind was not left waiting behind the first
    assert str(refused.value).startswith(f"could not list onlineendpoints in {NS}; endpointslices in {NS} "
                                         "within 0.5 s"), refused.value


async def test_traffic_waits_for_the_rollout_status(apiserver, kubeconfig, tmp_path, replicas, client):
    first, second = replicas
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=4)
    put_deployment(apiserver, "iris", "green", limit=4, rolled_out=False)
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", first.port)
    put_replica(apiserver, "iris", "green", "iris-green-pod-1", second.port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        traffic = lambda: dict(router.router.holder.current.endpoints["iris"].traffic)  # noqa: E731
        apiserver.update(("scoregate.io", "v1", "onlineendpoints"), NS, "iris",
                         lambda o: o["spec"].__setitem__("traffic", {"blue": 50, "green": 50}))
        # the router has the new split in its view: the table was rebuilt from it (same call)
        await eventually(lambda: [r.endpoint.traffic for r in router.discovery.view.records]
                         == [{"blue": 50, "green": 50}], what="the edited endpoint in the router's view")
        assert traffic() == {"blue": 100}  # green has not rolled out: the old split stays in effect
        status, _, headers = await score(client, router.port, **{"azureml-model-deployment": "green"})
        assert status == 200 and headers["azureml-model-deployment"] == "green"  # a pin may test it
        set_rolled_out(apiserver, "iris-green")
        await eventually(lambda: traffic() == {"blue": 50, "green": 50})
        seen = {(await score(client, router.port))[2]["azureml-model-deployment"] for _ in range(30)}
        assert seen == {"blue", "green"}
    finally:
        await router.close()


async def test_run_router_serves_until_stopped(apiserver, kubeconfig, tmp_path, replicas, client):
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue")
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replicas[0].port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(run_router(router_settings(kubeconfig, "router-a", tmp_path, port=port), stop))
    try:
        async def answered():
            try:
                return (await score(client, port))[0] == 200
            except aiohttp.ClientConnectionError:
                return False
        for _ in range(100):
            if await answered():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("run_router never answered")
        leases = {lease["metadata"]["name"] for lease in apiserver.objects_of("leases", "scoregate-system")}
        assert "scoregate-router-report-router-a" in leases
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    # a graceful exit withdraws the report and hands the coordinator Lease over
    leases = {lease["metadata"]["name"]: lease for lease in apiserver.objects_of("leases", "scoregate-system")}
    assert "scoregate-router-report-router-a" not in leases
    assert leases["scoregate-router-coordinator"]["spec"]["holderIdentity"] == ""


def test_command_line_settings(monkeypatch):
    import argparse

    from serving.backends.kubernetes import router_running

    monkeypatch.setenv("POD_NAME", "scoregate-router-7d9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "scoregate-system")
    parser = argparse.ArgumentParser()
    router_running.add_arguments(parser)
    settings = router_running.settings_from_args(parser.parse_args(
        ["--namespace", "team-a", "--namespace", "team-b", "--tls-secret", "scoregate-router-tls", "--port", "9443"]))
    assert settings.namespaces == ("team-a", "team-b") and settings.port == 9443
    assert settings.tls_secret == "scoregate-router-tls" and settings.coordination
    assert settings.identity == "scoregate-router-7d9f-abcde" and settings.coordination_namespace == "scoregate-system"
    every = router_running.settings_from_args(parser.parse_args(["--all-namespaces", "--no-coordination"]))
    assert every.namespaces is None and not every.coordination


async def test_an_invalid_edit_keeps_the_last_valid_version_routed(apiserver, kubeconfig, tmp_path, replicas, client):
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=4)
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replicas[0].port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        assert (await score(client, router.port))[0] == 200
        discovery = router.discovery

        def rebuilt_after(plural: str, name: str, check) -> bool:
            """The router's cache holds the edit and the rebuild it scheduled has run."""
            cache = discovery._endpoints if plural == "onlineendpoints" else discovery._deployments
            return check(cache.get(NS, name) or {}) and not discovery._scheduled

        # traffic that no longer adds up (the controller refuses it): the last valid split stays
        apiserver.update(("scoregate.io", "v1", "onlineendpoints"), NS, "iris",
                         lambda o: o["spec"].__setitem__("traffic", {"blue": 60}))
        await eventually(lambda: rebuilt_after("onlineendpoints", "iris",
                                               lambda o: o["spec"]["traffic"] == {"blue": 60}))
        assert dict(router.router.holder.current.endpoints["iris"].traffic) == {"blue": 100}
        status, body, _ = await score(client, router.port)
        assert status == 200, body
        # a deployment edit the schema allows and the rules refuse (min above max): still routed
        apiserver.update(("scoregate.io", "v1", "onlinedeployments"), NS, "iris-blue", lambda o: o["spec"].__setitem__(
            "scaleSettings", {"type": "target_utilization", "minInstances": 3, "maxInstances": 2}))
        await eventually(lambda: rebuilt_after("onlinedeployments", "iris-blue",
                                               lambda o: "scaleSettings" in o["spec"]))
        assert replicas_in(router, "iris", "blue") == [f"{NS}/iris-blue-pod-1"]
        status, body, _ = await score(client, router.port)
        assert status == 200, body
        # a rename (the controller refuses it): blue, the deployment the traffic names, stays
        apiserver.update(("scoregate.io", "v1", "onlinedeployments"), NS, "iris-blue", lambda o: o["spec"].update(
            deploymentName="green", scaleSettings={}))
        await eventually(lambda: rebuilt_after("onlinedeployments", "iris-blue",
                                               lambda o: o["spec"]["deploymentName"] == "green"))
        assert list(router.router.holder.current.endpoints["iris"].deployments) == ["blue"]
        status, body, _ = await score(client, router.port)
        assert status == 200, body
    finally:
        await router.close()


async def test_a_request_pinned_to_a_failed_deployment_is_told_why(apiserver, kubeconfig, tmp_path, replicas, client):
    """A 503 for a deployment whose only version failed says so (from its status), not only
    that no replica is ready — retrying will not help until a fixed version is applied."""
    first, _ = replicas
    put_endpoint(apiserver, "iris", {"blue": 100})
    put_deployment(apiserver, "iris", "blue", limit=4)
    put_deployment(apiserver, "iris", "green", limit=4, rolled_out=False)
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", first.port)
    router = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    await router.start()
    try:
        status, body, _ = await score(client, router.port, **{"azureml-model-deployment": "green"})
        assert status == 503 and "failed to roll out" not in json.loads(body)["message"]  # still rolling out
        apiserver.update(("scoregate.io", "v1", "onlinedeployments"), NS, "iris-green", lambda o: o.__setitem__(
            "status", {"provisioningState": "Failed", "rollout": {
                "spec_hash": "abc", "kind": "create", "budget_s": 1200.0, "started_at": 1.0, "state": "Failed",
                "failed_stage": "init", "reason": "init() raised ValueError: bad model"}}))
        await eventually(lambda: router.router.holder.current.endpoints["iris"].deployments["green"]
                         .unavailable_reason is not None, what="the failure in the routing table")
        status, body, headers = await score(client, router.port, **{"azureml-model-deployment": "green"})
        error = json.loads(body)
        assert status == 503 and error["code"] == "NoReadyReplica"
        assert "failed to roll out in stage init (init() raised ValueError: bad model)" in error["message"]
        assert (await score(client, router.port))[0] == 200  # the endpoint's traffic is unaffected
    finally:
        await router.close()
