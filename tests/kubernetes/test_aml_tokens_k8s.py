"""`authMode: aml_token` on a cluster, as a user meets it: the controller makes the signing
key Secret, `scoregate endpoint get-token --backend kubernetes` (a real child process, the
user's kubeconfig) mints a token, and a router lets it through to a real model server;
tokens for another endpoint, expired, tampered with, or a key are refused (401). The
Secret is made once: one that exists (made before, or by someone else meanwhile) is kept."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time

import aiohttp
import pytest
import yaml

from serving.backends.kubernetes.api import ONLINE_ENDPOINTS
from serving.tokens import TokenIssuer
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import ROOT, ModelReplica, put_replica, router_settings
from tests.kubernetes.test_controller import (NS, after_passes, controller, kubectl_apply, sample,  # noqa: F401
                                              status_of)
from tests.kubernetes.test_kept_across_restart import SAMPLE, primary_key, replica  # noqa: F401

SECRETS = ("", "v1", "secrets")
SIGNING = "scoregate-secrets"


def aml_token_sample() -> list[dict]:
    docs = sample("instancetypes.yaml") + sample("iris-endpoint.yaml")
    for doc in docs:
        if doc["kind"] == "OnlineEndpoint":
            doc["spec"]["authMode"] = "aml_token"
    return docs + [{"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
                    "metadata": {"name": "other", "namespace": NS},
                    "spec": {"authMode": "aml_token", "traffic": {}}}]


async def get_token(kubeconfig: str, name: str, *extra: str) -> tuple[int, dict | str]:
    """`scoregate endpoint get-token --backend kubernetes` as a user runs it: exit code, output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "serving.cli", "endpoint", "get-token", "--backend", "kubernetes", "-n", name,
        "--kubeconfig", kubeconfig, "--namespace", NS, *extra, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, json.loads(out) if process.returncode == 0 else err.decode()


async def score(port: int, credential: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        async with session.post(f"https://127.0.0.1:{port}/api/v1/endpoint/iris/score", data=SAMPLE,
                                headers={"Content-Type": "application/json",
                                         "Authorization": f"Bearer {credential}"}) as response:
            return response.status, await response.read()


def signing_secret(apiserver) -> dict | None:
    return apiserver.get(SECRETS, NS, SIGNING)


def tampered(token: str) -> str:
    """The same signature over claims that say later expiry: what a holder of an expired token tries."""
    prefix, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] += 3600
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{prefix}.{forged}.{signature}"


@pytest.fixture
async def router(kubeconfig, tmp_path):
    from serving.backends.kubernetes.router_running import KubernetesRouter

    started = KubernetesRouter(router_settings(kubeconfig, "router-a", tmp_path, coordination=False))
    yield started
    await started.close()


async def test_an_aml_token_endpoint_is_callable_with_a_minted_token(apiserver, kubeconfig, kube_api, cluster,
                                                                     controller, router, replica):
    await kubectl_apply(kube_api, aml_token_sample())
    controller()
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=15, what="iris-blue Succeeded")
    put_replica(apiserver, "iris", "blue", "iris-blue-pod-1", replica.port)
    await router.start()
    secret = signing_secret(apiserver)
    assert secret is not None and set(secret["data"]) == {"aml_token"}, "the controller made the signing key"

    code, token = await get_token(kubeconfig, "iris")
    assert code == 0, token
    assert token["tokenType"] == "Bearer" and set(token) == {"accessToken", "tokenType", "expiryTimeUtc",
                                                             "refreshAfterTimeUtc"}
    assert time.time() + 3500 < token["expiryTimeUtc"] <= time.time() + 3600  # an hour, as get-credentials
    await eventually(lambda: router.discovery.verify_token("iris", token["accessToken"].encode()), timeout_s=10,
                     what="the router has the signing key")
    status, body = await score(router.port, token["accessToken"])
    assert status == 200 and json.loads(body)["predictions"], body

    code, foreign = await get_token(kubeconfig, "other")
    assert code == 0, foreign
    assert (await score(router.port, foreign["accessToken"]))[0] == 401  # issued for another endpoint
    assert (await score(router.port, tampered(token["accessToken"])))[0] == 401
    assert (await score(router.port, primary_key(apiserver)))[0] == 401  # keys do not open aml_token
    # 4 s (exp is whole seconds: 3-4 s after minting) leaves seconds for one score before it,
    # also on a busy machine
    code, short = await get_token(kubeconfig, "iris", "--lifetime", "4s")
    assert code == 0, short
    assert (await score(router.port, short["accessToken"]))[0] == 200
    await eventually(lambda: time.time() >= short["expiryTimeUtc"], timeout_s=6, what="the short token's expiry")
    assert (await score(router.port, short["accessToken"]))[0] == 401  # expired
    assert (await score(router.port, token["accessToken"]))[0] == 200

    # tokens are for aml_token endpoints only, as the embedded gateway says
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "other", {"spec": {"authMode": "key"}})
    code, refusal = await get_token(kubeconfig, "other")
    # 2, refused as asked: as get-token on a key endpoint of a local gateway (README's exit codes)
    assert code == 2 and "uses auth_mode key; tokens are for aml_token endpoints" in refusal, refusal


async def test_the_signing_key_is_made_once_and_never_overwritten(apiserver, kubeconfig, controller):
    first = controller()
    made = await eventually(lambda: signing_secret(apiserver), timeout_s=10, what="the signing key Secret")
    await after_passes(first.registry, 2)
    second = controller()  # e.g. the next leader: finds it and leaves it
    await after_passes(second.registry, 2)
    assert signing_secret(apiserver)["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]

    # deleting the Secret rotates the key: a new one is made, tokens of the old one stop working
    old = TokenIssuer(base64.b64decode(made["data"]["aml_token"]).decode()).issue("iris")["accessToken"]
    apiserver.delete(SECRETS, NS, SIGNING)
    remade = await eventually(lambda: signing_secret(apiserver), timeout_s=10, what="a new signing key Secret")
    assert remade["data"]["aml_token"] != made["data"]["aml_token"]
    assert not TokenIssuer(base64.b64decode(remade["data"]["aml_token"]).decode()).verify("iris", old.encode())


async def test_a_signing_key_made_by_someone_else_is_kept(apiserver, kubeconfig, controller):
    apiserver.create(("scoregate.io", "v1", "onlineendpoints"), {
        "apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint", "metadata": {"name": "iris", "namespace": NS},
        "spec": {"authMode": "aml_token", "traffic": {}}})
    theirs = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": SIGNING, "namespace": NS},
              "data": {"aml_token": base64.b64encode(b"made-by-the-operator").decode()}}
    raced = []

    def someone_else_first(body) -> bool:
        """Between the controller's list (no Secret) and its create, another party makes one."""
        if isinstance(body, dict) and body.get("metadata", {}).get("name") == SIGNING and not raced:
            raced.append(apiserver.create(SECRETS, theirs))
        return False  # no injected failure: the emulator answers the create 409, as an API server would

    apiserver.fail_next("POST", "secrets", 409, when=someone_else_first)
    running = controller()
    await after_passes(running.registry, 2)  # the keeper looks (and creates) before the first pass
    assert raced, "the controller tried to create the Secret"
    assert signing_secret(apiserver)["data"] == theirs["data"]
    assert signing_secret(apiserver)["metadata"]["resourceVersion"] == raced[0]["metadata"]["resourceVersion"]
    code, token = await get_token(kubeconfig, "iris")
    assert code == 0, token
    assert TokenIssuer("made-by-the-operator").verify("iris", token["accessToken"].encode())
    code, refusal = await get_token(kubeconfig, "iriss")
    assert code == 1 and "no OnlineEndpoint team-a/iriss" in refusal, refusal


async def test_a_refused_create_is_retried_without_holding_the_controller_up(apiserver, kubeconfig, controller):
    # refused three times (e.g. RBAC without create for a while): retried with back-off
    # (0.5, 1, 2 s, jittered down to half), while the reconcile loop already runs
    refusal = apiserver.fail_next("POST", "secrets", 403, times=3,
                                  when=lambda body: (body or {}).get("metadata", {}).get("name") == SIGNING)
    running = controller()
    await after_passes(running.registry, 1, timeout_s=3)  # serving does not wait for the signing key
    await eventually(lambda: signing_secret(apiserver), timeout_s=15, what="the signing key Secret, made on retry")
    assert refusal.hits == 3


def test_get_token_takes_the_namespace_from_the_kubeconfig_context(tmp_path, monkeypatch):
    """Without --namespace, as kubectl without -n: the chosen context's namespace, else default."""
    from serving.backends.kubernetes.api import context_namespace

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "team",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
                     {"name": "plain", "context": {"cluster": "c", "user": "u"}}]}))
    assert context_namespace(str(path)) == "team-a"
    assert context_namespace(str(path), "plain") == "default"
    assert context_namespace(str(tmp_path / "missing")) == "default"


async def test_a_kubeconfig_that_does_not_exist_is_named_as_missing(tmp_path):
    code, err = await get_token(str(tmp_path / "no-such-kubeconfig"), "iris")
    assert code == 2
    assert err.strip().splitlines()[-1] == f"error: no kubeconfig file {tmp_path / 'no-such-kubeconfig'}"
