"""BatchEndpoint / BatchDeployment custom resources, acted on by the batch runner
(run_batch) against the emulator: the CRs become a batch endpoint that accepts jobs over
HTTPS with the key from its Secret, real worker processes score the iris example, the
status subresource says what happened, and deleting the endpoint removes it."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from serving.backends.kubernetes.api import BATCH_DEPLOYMENTS, BATCH_ENDPOINTS, ONLINE_ENDPOINTS, SECRETS
from serving.backends.kubernetes.batch_running import BatchRunnerSettings, run_batch
from tests.kubernetes.conftest import eventually

NS = "team-a"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATA = EXAMPLES / "iris-batch" / "data"


def batch_endpoint(default: str | None = "classifier") -> dict:
    spec = {"authMode": "key", "description": "iris in bulk"}
    if default:
        spec["defaults"] = {"deploymentName": default}
    return {"apiVersion": "scoregate.io/v1", "kind": "BatchEndpoint",
            "metadata": {"name": "iris-batch", "namespace": NS}, "spec": spec}


def batch_deployment(**spec) -> dict:
    return {"apiVersion": "scoregate.io/v1", "kind": "BatchDeployment",
            "metadata": {"name": "iris-batch-classifier", "namespace": NS},
            "spec": {"endpointName": "iris-batch", "deploymentName": "classifier",
                     "model": {"path": f"file://{EXAMPLES / 'iris' / 'blue' / 'model'}"},
                     "codeConfiguration": {"code": f"file://{EXAMPLES / 'iris-batch' / 'code'}",
                                           "scoringScript": "batch_score.py"},
                     "miniBatchSize": 4, "maxConcurrencyPerInstance": 2, "outputFileName": "predictions.csv",
                     **spec}}


def status(apiserver, plural: str, name: str) -> dict:
    obj = next((o for o in apiserver.objects_of(plural, NS) if o["metadata"]["name"] == name), None)
    return (obj or {}).get("status") or {}


@pytest.fixture
async def runner(kubeconfig, tmp_path):
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    settings = BatchRunnerSettings(state_dir=str(tmp_path / "batch-state"), data_roots=(str(DATA),),
                                   kubeconfig=kubeconfig, namespaces=(NS,), host="127.0.0.1", port=0,
                                   leader_election=False)
    task = asyncio.get_running_loop().create_task(run_batch(settings, stop, on_ready=ready.set_result))
    running = await asyncio.wait_for(asyncio.shield(ready), 30)
    context = ssl.create_default_context(cafile=running.ca_cert)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield running, session
    stop.set()
    await asyncio.wait_for(task, 30)


def key_of(apiserver) -> str | None:
    secret = next((s for s in apiserver.objects_of("secrets", NS)
                   if s["metadata"]["name"] == "scoregate-keys-iris-batch"), None)
    return base64.b64decode(secret["data"]["primaryKey"]).decode() if secret else None


async def test_batch_custom_resources_accept_and_run_jobs(apiserver, kube_api, runner):
    running, session = runner
    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    await eventually(lambda: status(apiserver, "batchendpoints", "iris-batch").get("provisioningState")
                     == "Succeeded", timeout_s=15)
    assert status(apiserver, "batchdeployments", "iris-batch-classifier")["provisioningState"] == "Succeeded"
    assert status(apiserver, "batchendpoints", "iris-batch")["keysSecretName"] == "scoregate-keys-iris-batch"
    key = key_of(apiserver)
    [secret] = [s for s in apiserver.objects_of("secrets", NS) if s["metadata"]["name"] == "scoregate-keys-iris-batch"]
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "BatchEndpoint"
    jobs = f"{running.scoring_url}/api/v1/batch/iris-batch/jobs"

    async with session.post(jobs, json={"input": {"type": "uri_folder", "path": "flowers"}}) as response:
        assert response.status == 401  # no key
    async with session.post(jobs, json={"input": {"type": "uri_folder", "path": "flowers"}},
                            headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 202, await response.text()
        job = await response.json()
    assert job["deployment_name"] == "classifier" and job["settings"]["mini_batch_size"] == 4

    async def finished():
        async with session.get(f"{jobs}/{job['id']}", headers={"Authorization": f"Bearer {key}"}) as answer:
            body = await answer.json()
        return body if body["status"] in ("Completed", "Failed", "Canceled") else None
    done = None
    for _ in range(600):
        done = await finished()
        if done:
            break
        await asyncio.sleep(0.1)
    assert done and done["status"] == "Completed", done
    async with session.get(f"{jobs}/{job['id']}/output", headers={"Authorization": f"Bearer {key}"}) as answer:
        rows = (await answer.text()).splitlines()
    flowers = sorted(p.name for p in (DATA / "flowers").iterdir())
    assert [row.split(",")[0] for row in rows] == flowers and all(len(row.split(",", 1)[1]) > 0 for row in rows)

    # Rotating the Secret's key rotates the endpoint's.
    new_key = "rotated-by-the-operator-0123456789"
    secret["data"]["primaryKey"] = base64.b64encode(new_key.encode()).decode()
    await kube_api.replace(SECRETS, NS, secret["metadata"]["name"], secret)

    async def key_works(credential: str) -> bool:
        async with session.get(jobs, headers={"Authorization": f"Bearer {credential}"}) as answer:
            return answer.status == 200
    for _ in range(100):
        if await key_works(new_key):
            break
        await asyncio.sleep(0.05)
    assert await key_works(new_key) and not await key_works(key)

    # A Secret with a key emptied is not taken: the status says so, the keys in use stay.
    emptied = await kube_api.get(SECRETS, NS, secret["metadata"]["name"])
    emptied["data"]["secondaryKey"] = ""
    await kube_api.replace(SECRETS, NS, secret["metadata"]["name"], emptied)
    reason = await eventually(lambda: (s := status(apiserver, "batchendpoints", "iris-batch"))
                              .get("provisioningState") == "Failed" and s["reason"], timeout_s=10)
    assert reason == ("BatchEndpoint team-a/iris-batch: Secret scoregate-keys-iris-batch must hold both "
                      "primaryKey and secondaryKey; the keys in use are unchanged"), reason
    assert await key_works(new_key)
    # Nor one edited into bytes that are not text: that endpoint says so, every pass goes on.
    garbled = await kube_api.get(SECRETS, NS, secret["metadata"]["name"])
    garbled["data"]["secondaryKey"] = base64.b64encode(b"\xff\xfe not text").decode()
    await kube_api.replace(SECRETS, NS, secret["metadata"]["name"], garbled)
    reason = await eventually(lambda: "cannot be read as text" in (
        reason := status(apiserver, "batchendpoints", "iris-batch").get("reason", "")) and reason, timeout_s=10)
    assert reason.startswith("BatchEndpoint team-a/iris-batch: Secret scoregate-keys-iris-batch: its keys cannot be "
                             "read as text") and reason.endswith("the keys in use are unchanged"), reason
    assert await key_works(new_key)

    # Deleting the endpoint takes it (and its jobs) away.
    await kube_api.delete(BATCH_DEPLOYMENTS, NS, "iris-batch-classifier")
    await kube_api.delete(BATCH_ENDPOINTS, NS, "iris-batch")
    for _ in range(100):
        async with session.get(jobs, headers={"Authorization": f"Bearer {new_key}"}) as answer:
            gone = (answer.status, await answer.text())
        if gone[0] == 404:
            break
        await asyncio.sleep(0.05)
    assert gone[0] == 404 and json.loads(gone[1])["code"] == "EndpointNotFound"


async def test_invalid_batch_resources_are_reported_and_the_last_good_one_serves(apiserver, kube_api, runner,
                                                                                 tmp_path):
    running, session = runner
    await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    await eventually(lambda: "no valid BatchEndpoint iris-batch in namespace team-a" in
                     status(apiserver, "batchdeployments", "iris-batch-classifier").get("reason", ""), timeout_s=10)
    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    await eventually(lambda: status(apiserver, "batchdeployments", "iris-batch-classifier").get("provisioningState")
                     == "Succeeded" and key_of(apiserver), timeout_s=15)

    # An edit the rules refuse: Failed with the field named; the last good version still takes jobs.
    await kube_api.patch(BATCH_DEPLOYMENTS, NS, "iris-batch-classifier",
                         {"spec": {"outputFileName": "../escape.csv"}})
    reason = await eventually(lambda: (s := status(apiserver, "batchdeployments", "iris-batch-classifier"))
                              .get("provisioningState") == "Failed" and s["reason"], timeout_s=10)
    assert reason.startswith("BatchDeployment team-a/iris-batch-classifier: spec.outputFileName:"), reason
    async with session.post(f"{running.scoring_url}/api/v1/batch/iris-batch/jobs",
                            json={"input": {"type": "inline", "data": [[5.1, 3.5, 1.4, 0.2]]}},
                            headers={"Authorization": f"Bearer {key_of(apiserver)}"}) as response:
        assert response.status == 202, await response.text()
        assert (await response.json())["settings"]["output_file_name"] == "predictions.csv"

    # Code that is not there.
    await kube_api.patch(BATCH_DEPLOYMENTS, NS, "iris-batch-classifier", {"spec": {
        "outputFileName": "predictions.csv", "codeConfiguration": {"code": "file:///nonexistent/code"}}})
    reason = await eventually(lambda: (s := status(apiserver, "batchdeployments", "iris-batch-classifier"))
                              .get("reason", "").startswith("BatchDeployment") and "nonexistent" in s["reason"]
                              and s["reason"], timeout_s=10)
    assert "/nonexistent/code does not exist" in reason
    assert "spec.codeConfiguration.code:" in reason

    # An archive that cannot be unpacked: this object is Failed, naming the field, and the
    # runner goes on with every other object (it is not an error that stops the whole pass).
    broken = tmp_path / "broken-code.tar.gz"
    broken.write_bytes(b"not a tar archive")
    await kube_api.patch(BATCH_DEPLOYMENTS, NS, "iris-batch-classifier", {"spec": {
        "codeConfiguration": {"code": f"file://{broken}"}}})
    reason = await eventually(lambda: (s := status(apiserver, "batchdeployments", "iris-batch-classifier"))
                              .get("reason", "").startswith("BatchDeployment") and "broken-code" in s["reason"]
                              and s["reason"], timeout_s=10)
    assert "spec.codeConfiguration.code: cannot fetch file://" in reason, reason
    await kube_api.patch(BATCH_ENDPOINTS, NS, "iris-batch", {"spec": {"description": "edited meanwhile"}})
    await eventually(lambda: status(apiserver, "batchendpoints", "iris-batch").get("observedGeneration", 0) >= 2,
                     timeout_s=10)


@pytest.mark.parametrize("deployment", [{"outputFileName": "../escape.csv"}, None], ids=["refused", "missing"])
async def test_a_batch_endpoint_has_its_keys_while_its_default_deployment_is_not_valid(apiserver, kube_api, runner,
                                                                                       deployment):
    """Keys come with the endpoint, as in Azure ML: a BatchEndpoint whose default deployment is
    refused by the rules, or not there at all, still gets its keys Secret at once, and the key
    authenticates; the endpoint's status names spec.defaults.deploymentName (and the refused
    deployment's names its field). Once the deployment is valid, the same key takes jobs."""
    running, session = runner
    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    if deployment is not None:
        await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment(**deployment))
        reason = await eventually(lambda: (s := status(apiserver, "batchdeployments", "iris-batch-classifier"))
                                  .get("provisioningState") == "Failed" and s["reason"], timeout_s=10)
        assert reason.startswith("BatchDeployment team-a/iris-batch-classifier: spec.outputFileName:"), reason
    reason = await eventually(lambda: (s := status(apiserver, "batchendpoints", "iris-batch"))
                              .get("provisioningState") == "Failed" and s["reason"], timeout_s=10)
    assert reason == ("BatchEndpoint team-a/iris-batch: spec.defaults.deploymentName: "
                      "no valid BatchDeployment classifier of this endpoint"), reason

    key = await eventually(lambda: key_of(apiserver), timeout_s=10, what="the keys Secret scoregate-keys-iris-batch")
    [secret] = [s for s in apiserver.objects_of("secrets", NS) if s["metadata"]["name"] == "scoregate-keys-iris-batch"]
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "BatchEndpoint"
    assert all(base64.b64decode(secret["data"][k]) for k in ("primaryKey", "secondaryKey"))
    jobs = f"{running.scoring_url}/api/v1/batch/iris-batch/jobs"

    async def listed_with(credential: str) -> int:
        async with session.get(jobs, headers={"Authorization": f"Bearer {credential}"}) as answer:
            return answer.status

    async def key_accepted() -> bool:
        return await listed_with(key) == 200
    await eventually(key_accepted, timeout_s=10, what="the Secret's key accepted")
    assert await listed_with("not-the-key") == 401
    assert status(apiserver, "batchendpoints", "iris-batch")["provisioningState"] == "Failed"
    await eventually(lambda: status(apiserver, "batchendpoints", "iris-batch").get("keysSecretName")
                     == "scoregate-keys-iris-batch", timeout_s=10, what="the status naming the keys Secret")

    if deployment is None:
        await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    else:
        await kube_api.patch(BATCH_DEPLOYMENTS, NS, "iris-batch-classifier", {"spec": {"outputFileName": "out.csv"}})
    await eventually(lambda: status(apiserver, "batchendpoints", "iris-batch").get("provisioningState")
                     == "Succeeded", timeout_s=15)
    assert key_of(apiserver) == key
    async with session.post(jobs, json={"input": {"type": "inline", "data": [[5.1, 3.5, 1.4, 0.2]]}},
                            headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status == 202, await response.text()


async def test_a_batch_endpoint_may_not_take_the_name_of_an_online_endpoint(apiserver, kube_api, runner):
    """Endpoint names are unique across online and batch endpoints (as `scoregate apply` rules
    locally): a BatchEndpoint named like an OnlineEndpoint of its namespace is Failed with a
    reason naming the OnlineEndpoint, gets no keys Secret (that name is the online
    endpoint's) and takes no jobs; once the OnlineEndpoint is gone it is served."""
    running, session = runner
    await kube_api.create(ONLINE_ENDPOINTS, NS, {"apiVersion": "scoregate.io/v1", "kind": "OnlineEndpoint",
                                                 "metadata": {"name": "iris-batch", "namespace": NS},
                                                 "spec": {"authMode": "key"}})
    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    reason = await eventually(lambda: (s := status(apiserver, "batchendpoints", "iris-batch"))
                              .get("provisioningState") == "Failed" and s["reason"], timeout_s=15)
    assert reason.startswith("BatchEndpoint team-a/iris-batch: metadata.name:"), reason
    assert "already used by OnlineEndpoint team-a/iris-batch" in reason
    await eventually(lambda: "no valid BatchEndpoint iris-batch" in
                     status(apiserver, "batchdeployments", "iris-batch-classifier").get("reason", ""), timeout_s=10)
    assert key_of(apiserver) is None
    jobs = f"{running.scoring_url}/api/v1/batch/iris-batch/jobs"
    async with session.post(jobs, json={"input": {"type": "inline", "data": [[5.1, 3.5, 1.4, 0.2]]}},
                            headers={"Authorization": "Bearer anything"}) as response:
        assert response.status == 404 and (await response.json())["code"] == "EndpointNotFound"

    await kube_api.delete(ONLINE_ENDPOINTS, NS, "iris-batch")
    await eventually(lambda: status(apiserver, "batchendpoints", "iris-batch").get("provisioningState")
                     == "Succeeded" and key_of(apiserver), timeout_s=15)
    await eventually(lambda: status(apiserver, "batchdeployments", "iris-batch-classifier").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    async with session.post(jobs, json={"input": {"type": "inline", "data": [[5.1, 3.5, 1.4, 0.2]]}},
                            headers={"Authorization": f"Bearer {key_of(apiserver)}"}) as response:
        assert response.status == 202, await response.text()


async def test_the_crd_refuses_the_auth_modes_the_runner_refuses(apiserver, kube_api):
    """`kubectl apply` of a BatchEndpoint with an auth mode batch does not take fails at once
    (422 from the CRD's schema), rather than being accepted and then reported Failed; every
    mode the schema allows is one the runner accepts."""
    import yaml

    from serving.backends.kubernetes.api import status_of as http_status
    from serving.backends.kubernetes.batch_translation import batch_endpoint_from_custom_resource

    crd = yaml.safe_load((EXAMPLES.parent / "deploy" / "crds" / "batchendpoints.scoregate.io.yaml").read_text())
    allowed = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "authMode"]["enum"]
    for mode in allowed:
        body = batch_endpoint()
        body["spec"]["authMode"] = mode
        assert batch_endpoint_from_custom_resource(body).auth_mode == mode
    body = batch_endpoint()
    body["spec"]["authMode"] = "aml_token"
    with pytest.raises(Exception) as refused:
        await kube_api.create(BATCH_ENDPOINTS, NS, body)
    assert http_status(refused.value) == 422
    assert apiserver.objects_of("batchendpoints", NS) == []



async def test_a_second_batch_deployment_of_one_name_is_refused_naming_the_object_and_field(apiserver, kube_api,
                                                                                            runner):
    await kube_api.create(BATCH_ENDPOINTS, NS, batch_endpoint())
    await kube_api.create(BATCH_DEPLOYMENTS, NS, batch_deployment())
    await eventually(lambda: status(apiserver, "batchdeployments", "iris-batch-classifier").get("provisioningState")
                     == "Succeeded", timeout_s=15)
    again = batch_deployment()
    again["metadata"]["name"] = "iris-batch-classifier-again"
    await kube_api.create(BATCH_DEPLOYMENTS, NS, again)
    await eventually(lambda: status(apiserver, "batchdeployments", "iris-batch-classifier-again").get("reason") == (
        "BatchDeployment team-a/iris-batch-classifier-again: spec.deploymentName: endpoint iris-batch already has a"
        " deployment classifier (BatchDeployment team-a/iris-batch-classifier)"), timeout_s=10)
    assert status(apiserver, "batchdeployments", "iris-batch-classifier")["provisioningState"] == "Succeeded"
