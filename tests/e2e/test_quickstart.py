"""The README Quickstart, as a user runs it: serve the iris example, list, get keys,
score with curl and with the CLI, apply a new endpoint, delete it, stop the gateway."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest

from tests.support.gateway import REPO, GatewayProcess, alive, wait_for
from tests.support.manifests import write_deployment, write_endpoint

IRIS = REPO / "examples" / "iris"


@pytest.fixture(scope="module")
def iris_gateway(tmp_path_factory):
    """One iris gateway for the module's tests that only use it (none stops it; the one that
    applies an endpoint deletes it again and checks that only iris is left); every process
    it started is ended at teardown."""
    gateway = GatewayProcess(tmp_path_factory.mktemp("quickstart") / "state", [str(IRIS)]).start()
    try:
        gateway.wait_ready("iris", ["blue", "green"])
        yield gateway
    finally:
        gateway.kill_everything()


def test_endpoint_list_and_credentials_are_json(iris_gateway):
    endpoints = iris_gateway.cli_json("endpoint", "list")
    assert [e["name"] for e in endpoints] == ["iris"]
    assert endpoints[0]["traffic"] == {"blue": 90, "green": 10}
    assert endpoints[0]["scoring_uri"] == f"{iris_gateway.scoring_url}/api/v1/endpoint/iris/score"
    keys = iris_gateway.cli_json("endpoint", "get-credentials", "--name", "iris")
    assert set(keys) == {"primaryKey", "secondaryKey"} and keys["primaryKey"] != keys["secondaryKey"]
    table = iris_gateway.cli("endpoint", "list", "-o", "table")
    assert table.returncode == 0 and "iris" in table.stdout and "blue=90" in table.stdout


def test_curl_scores_over_https_with_the_dev_ca(iris_gateway):
    assert shutil.which("curl"), "curl is needed (.ci/run installs it)"
    key, _ = iris_gateway.keys("iris")
    done = subprocess.run(
        ["curl", "-sS", "-i", "--cacert", iris_gateway.info.ca_cert,
         "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
         "-d", f"@{IRIS / 'sample-request.json'}", f"{iris_gateway.scoring_url}/api/v1/endpoint/iris/score"],
        capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head.split("\r\n")[1:]}
    assert headers["azureml-model-deployment"] in ("blue", "green")
    assert headers["x-request-id"]
    assert json.loads(body)["predictions"] == ["setosa", "versicolor", "virginica"]


def test_cli_invoke_with_and_without_a_pinned_deployment(iris_gateway):
    request = str(IRIS / "sample-request.json")
    green = iris_gateway.cli_json("endpoint", "invoke", "--name", "iris", "--request-file", request,
                                  "--deployment-name", "green")
    assert green["model"] == "decision-tree"
    blue = iris_gateway.cli_json("endpoint", "invoke", "-n", "iris", "-r", request, "-d", "blue")
    assert blue["model"] == "logistic-regression"
    bad = iris_gateway.cli("endpoint", "invoke", "-n", "iris", "-r", request, "-d", "purple")
    assert bad.returncode == 1 and "purple" in bad.stderr


def test_apply_while_running_then_delete_stops_the_replicas(iris_gateway, tmp_path):
    write_endpoint(tmp_path, "echo", traffic={"one": 100})
    write_deployment(tmp_path, "echo", "one", instance_count=2)
    applied = iris_gateway.cli_json("apply", "-f", str(tmp_path))
    assert {(a["kind"], a["name"]) for a in applied["applied"]} == {("endpoint", "echo"), ("deployment", "one")}
    iris_gateway.wait_ready("echo", ["one"])
    pids = {r["pid"] for r in iris_gateway.deployment("echo", "one")["replicas"]}
    assert len(pids) == 2 and all(alive(pid) for pid in pids)

    answer = iris_gateway.cli_json("endpoint", "invoke", "-n", "echo", "-r", str(IRIS / "sample-request.json"))
    assert answer["label"] == "one" and answer["pid"] in pids

    deleted = iris_gateway.cli_json("endpoint", "delete", "--name", "echo", "--yes")
    assert deleted == {"deleted": "echo"}
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, "the deleted endpoint's replicas to exit")
    assert [e["name"] for e in iris_gateway.cli_json("endpoint", "list")] == ["iris"]
    gone = iris_gateway.cli("endpoint", "show", "-n", "echo")
    assert gone.returncode != 0 and "no endpoint 'echo'" in gone.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_leaves_no_child_process(make_gateway, tmp_path, sig):
    write_endpoint(tmp_path, "echo", traffic={"one": 100})
    write_deployment(tmp_path, "echo", "one", instance_count=2)
    gateway = make_gateway([str(tmp_path)])
    gateway.wait_ready("echo", ["one"])
    children = gateway.replica_pids()
    assert len(children) >= 2
    assert gateway.stop(sig) == 0
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "replicas to exit")
    assert not gateway.state.gateway_file.exists()


def test_kill_9_of_the_gateway_leaves_no_replica(make_gateway, tmp_path):
    write_endpoint(tmp_path, "echo", traffic={"one": 100})
    write_deployment(tmp_path, "echo", "one", instance_count=2)
    gateway = make_gateway([str(tmp_path)])
    gateway.wait_ready("echo", ["one"])
    children = gateway.replica_pids()
    gateway.stop(signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in children), 10, "orphaned replicas to exit")


def test_cli_without_a_gateway_says_so(tmp_path):
    done = subprocess.run(["python", "-m", "serving.cli", "endpoint", "list", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=30)
    assert done.returncode == 3
    assert "no running gateway" in done.stderr


def test_invalid_yaml_is_refused_with_the_field_and_changes_nothing(iris_gateway, tmp_path):
    before = iris_gateway.cli_json("endpoint", "show", "-n", "iris")
    bad = tmp_path / "endpoint.yml"
    bad.write_text("name: iris\nauth_mode: key\ntraffic: {blue: 50, green: 10}\n")
    done = iris_gateway.cli("apply", "-f", str(bad))
    assert done.returncode == 2
    assert f"{bad}: traffic: weights must add up to 100" in done.stderr
    typo = tmp_path / "typo.yml"
    typo.write_text("name: iris\ntrafic: {blue: 100}\n")
    done = iris_gateway.cli("apply", "-f", str(typo))
    assert done.returncode == 2 and "trafic: unknown field" in done.stderr
    assert iris_gateway.cli_json("endpoint", "show", "-n", "iris") == before


def test_serve_refuses_to_start_with_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\n")
    done = subprocess.run(["python", "-m", "serving.cli", "serve", str(bad), "--state-dir", str(tmp_path / "s"),
                           "--port", "0", "--admin-port", "0"],
                          capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 2
    assert f"{bad}: name: must be 2-32 letters" in done.stderr
