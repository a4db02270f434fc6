"""Batch endpoints inside the real gateway (`scoregate serve … --data-root DIR`): online
traffic keeps being served while a batch job runs, the CLI verbs, and a kill -9 of the
gateway mid-job. Needs the gateway wiring of serving.batch (manifests.kind_of,
embedded.py, api.py, cli.py)."""

from __future__ import annotations

import csv
import io
import json
import signal
import time

import pytest

from tests.support.clients import scoring_session
from tests.support.gateway import REPO, wait_for

IRIS = REPO / "examples" / "iris"
IRIS_BATCH = REPO / "examples" / "iris-batch"
FLOWERS = 3000
TERMINAL = ("Completed", "Failed", "Canceled")


def write_flowers(folder, count: int) -> None:
    rows = list(csv.DictReader(open(IRIS / "data" / "iris.csv", encoding="utf-8")))
    folder.mkdir(parents=True)
    for i in range(count):
        row = rows[i % len(rows)]
        flower = {k: float(row[k]) for k in ("sepal_length", "sepal_width", "petal_length", "petal_width")}
        (folder / f"flower-{i:05d}.json").write_text(json.dumps(flower))


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    write_flowers(root / "flowers", FLOWERS)
    return root


@pytest.fixture
def gateway(make_gateway, data_root):
    gateway = make_gateway([str(IRIS), str(IRIS_BATCH)], ["--data-root", str(data_root)])
    gateway.wait_ready("iris", ["blue", "green"])
    return gateway


def batch_key(gateway) -> str:
    return gateway.cli_json("endpoint", "get-credentials", "--name", "iris-batch")["primaryKey"]


async def test_online_traffic_is_served_during_a_batch_job(gateway):
    online_key, batch = gateway.keys("iris")[0], batch_key(gateway)
    score_url = f"{gateway.scoring_url}/api/v1/endpoint/iris/score"
    jobs_url = f"{gateway.scoring_url}/api/v1/batch/iris-batch/jobs"
    sample = json.loads((IRIS / "sample-request.json").read_text())
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    async with scoring_session(gateway.info.ca_cert) as session:
        headers = {"Authorization": f"Bearer {batch}"}
        body = {"input": {"type": "uri_folder", "path": "flowers"},
                "settings": {"mini_batch_size": 10, "max_concurrency_per_instance": 2}}
        async with session.post(jobs_url, json=body, headers=headers) as response:
            assert response.status == 202, await response.text()
            job = await response.json()
        status, during = job["status"], 0
        while status not in TERMINAL:
            started = time.monotonic()
            async with session.post(score_url, json=sample, headers={"Authorization": f"Bearer {online_key}"}) as r:
                answer = await r.json()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.monotonic() - started)
            assert answer["predictions"] == ["setosa", "versicolor", "virginica"]
            async with session.get(f"{jobs_url}/{job['id']}", headers=headers) as r:
                view = await r.json()
            status = view["status"]
            during += status == "Running"
        assert status == "Completed", view
        async with session.get(f"{jobs_url}/{job['id']}/output", headers=headers) as r:
            assert r.status == 200
            rows = list(csv.reader(io.StringIO(await r.text())))
        # Without a credential: an unknown endpoint is 404 on both paths (the name is looked up
        # before the credential, docs/batch.md), a known one 401 on both.
        base = f"{gateway.scoring_url}/api/v1"
        for url, status, code in ((f"{base}/endpoint/nosuch/score", 404, "EndpointNotFound"),
                                  (f"{base}/batch/nosuch/jobs", 404, "EndpointNotFound"),
                                  (score_url, 401, None), (jobs_url, 401, None)):
            async with session.post(url, json={"input": {"type": "inline", "data": [1]}}) as r:
                refusal = await r.json()
                assert r.status == status and (code is None or refusal["code"] == code), (url, refusal)
    assert statuses == {200: len(latencies)}
    assert during >= 5, "the online requests overlapped the batch job"
    latencies.sort()
    assert latencies[int(len(latencies) * 0.95)] < 1.0, latencies[-10:]
    assert len(rows) == FLOWERS and len({r[0] for r in rows}) == FLOWERS
    assert rows[0] == ["flower-00000.json", rows[0][1]] and rows[0][1].startswith("setosa ")
    # Batch work ran in its own worker processes, never on the online replicas.
    assert view["items"]["succeeded"] == FLOWERS


def test_batch_cli_verbs(gateway, data_root, tmp_path):
    endpoints = {e["name"]: e["kind"] for e in gateway.cli_json("endpoint", "list")}
    assert endpoints["iris"] == "online" and endpoints["iris-batch"] == "batch"  # one list of both kinds
    shown = gateway.cli_json("endpoint", "show", "--name", "iris-batch")  # what is listed can be shown
    assert shown["kind"] == "batch" and shown["deployments"] == ["classifier"]
    assert [d["name"] for d in gateway.cli_json("deployment", "list", "--endpoint-name", "iris-batch")] == \
        ["classifier"]
    deployment = gateway.cli_json("deployment", "show", "--name", "classifier", "--endpoint-name", "iris-batch")
    assert deployment["kind"] == "batch" and deployment["settings"]["mini_batch_size"] == 10
    missing = gateway.cli("deployment", "show", "--name", "nope", "--endpoint-name", "iris-batch")
    assert missing.returncode == 1 and "no deployment 'nope' on batch endpoint 'iris-batch'" in missing.stderr
    # delete reaches batch deployments too (it said "is a batch endpoint", as for online-only verbs)
    missing = gateway.cli("deployment", "delete", "--name", "nope", "--endpoint-name", "iris-batch", "-y")
    assert missing.returncode == 1 and "no deployment 'nope' on batch endpoint 'iris-batch'" in missing.stderr
    default = gateway.cli("deployment", "delete", "--name", "classifier", "--endpoint-name", "iris-batch", "-y")
    # 409, still the default: refused as a rule refuses (2), as for an online one with traffic
    assert default.returncode == 2 and "default" in default.stderr, default.stderr
    for verb in (("deployment", "scale", "--name", "classifier", "--endpoint-name", "iris-batch",
                  "--instance-count", "2"),
                 ("endpoint", "invoke", "--name", "iris-batch", "--request-file", str(IRIS / "sample-request.json")),
                 ("endpoint", "update", "--name", "iris-batch", "--traffic", "classifier=100")):
        online_only = gateway.cli(*verb)  # what the verb is for, not "no endpoint" for one just listed
        assert online_only.returncode == 1 and "'iris-batch' is a batch endpoint" in online_only.stderr
    job = gateway.cli_json("batch", "invoke", "--name", "iris-batch", "--input", str(data_root / "flowers"),
                           "--mini-batch-size", "100", "--wait")
    assert job["status"] == "Completed" and job["items"]["succeeded"] == FLOWERS
    assert [j["id"] for j in gateway.cli_json("job", "list", "--name", "iris-batch")] == [job["id"]]
    shown = gateway.cli_json("job", "show", "--name", "iris-batch", "--job-id", job["id"])
    assert shown["mini_batches"]["total"] == FLOWERS // 100
    saved = gateway.cli_json("job", "download", "--name", "iris-batch", "--job-id", job["id"],
                             "--download-path", str(tmp_path / "dl"))
    assert len(open(saved["path"], encoding="utf-8").read().splitlines()) == FLOWERS
    refused = gateway.cli("batch", "invoke", "--name", "iris-batch", "--input", "/etc")
    assert refused.returncode == 2 and "outside every data root" in refused.stderr
    cancel = gateway.cli("job", "cancel", "--name", "iris-batch", "--job-id", job["id"])
    assert cancel.returncode == 2 and "already finished" in cancel.stderr, cancel.stderr  # 409: refused


def test_endpoint_names_are_unique_across_online_and_batch(gateway, tmp_path):
    clash = tmp_path / "clash.yml"
    clash.write_text("$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json\n"
                     "name: iris-batch\nauth_mode: key\n")
    done = gateway.cli("apply", "-f", str(clash))
    assert done.returncode == 2 and "iris-batch" in done.stderr


def test_a_gateway_killed_mid_job_resumes_it(make_gateway, data_root):
    args = ([str(IRIS_BATCH)], ["--data-root", str(data_root)])
    gateway = make_gateway(*args, name="resume")
    key = batch_key(gateway)
    status, _ = gateway.admin("GET", "/api/v1/batch/endpoints/iris-batch")
    assert status == 200
    job = gateway.cli_json("batch", "invoke", "--name", "iris-batch", "--input", "flowers",
                           "--mini-batch-size", "5", "--max-concurrency-per-instance", "1")
    wait_for(lambda: gateway.cli_json("job", "show", "--name", "iris-batch", "--job-id", job["id"])
             ["mini_batches"]["succeeded"] >= 3, 30, "the job to make progress")
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(10)

    again = make_gateway(*args, name="resume")
    assert batch_key(again) == key  # keys are durable too
    done = wait_for(lambda: (lambda j: j if j["status"] in TERMINAL else None)(
        again.cli_json("job", "show", "--name", "iris-batch", "--job-id", job["id"])), 60, "the job to finish")
    assert done["status"] == "Completed" and done["items"]["succeeded"] == FLOWERS
    saved = again.cli_json("job", "download", "--name", "iris-batch", "--job-id", job["id"],
                           "--download-path", str(data_root.parent / "dl"))
    names = [row[0] for row in csv.reader(open(saved["path"], encoding="utf-8"))]
    assert names == [f"flower-{i:05d}.json" for i in range(FLOWERS)]
