"""What the CLI prints: `endpoint invoke` gives the model's whole answer whatever `-o`
says, and `deployment logs -l N` gives N lines (0: none; a negative count is refused)."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.manifests import write_deployment, write_endpoint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("output")
    write_endpoint(folder, "ep1", traffic={"d1": 100})
    write_deployment(folder, "ep1", "d1")
    gw = GatewayProcess(folder / "state", [str(folder)]).start()
    try:
        gw.wait_ready("ep1", ["d1"])
        request = folder / "request.json"
        request.write_text(json.dumps({"data": [[1, 2], [3, 4]]}))
        gw.request = request
        yield gw
    finally:
        gw.kill_everything()


@pytest.mark.parametrize("output", ["table", "json"])
def test_invoke_prints_the_whole_answer(gateway, output):
    done = gateway.cli("-o", output, "endpoint", "invoke", "-n", "ep1", "-r", str(gateway.request))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["label"] == "d1" and answer["echo"] == {"data": [[1, 2], [3, 4]]}


def test_log_lines_are_counted_from_zero(gateway):
    done = gateway.cli("deployment", "logs", "-n", "d1", "-e", "ep1", "-l", "2")
    assert done.returncode == 0 and 1 <= len(done.stdout.splitlines()) <= 2, done.stdout
    for output in ("json", "table"):
        done = gateway.cli("-o", output, "deployment", "logs", "-n", "d1", "-e", "ep1", "-l", "0")
        assert done.returncode == 0 and done.stdout == "", (output, done.stdout, done.stderr)
    status, body = gateway.admin("GET", "/api/v1/endpoints/ep1/deployments/d1/logs?lines=0")
    assert status == 200 and body == ""


def test_a_negative_line_count_is_refused(gateway):
    for given in ("-3", "x", "10001"):
        done = gateway.cli("deployment", "logs", "-n", "d1", "-e", "ep1", "-l", given)
        assert done.returncode == 2 and done.stdout == "", (given, done.stdout)
        assert "--lines" in done.stderr and "0 to 10000" in done.stderr, done.stderr
    status, body = gateway.admin("GET", "/api/v1/endpoints/ep1/deployments/d1/logs?lines=-3")
    assert status == 400 and "from 0 to 10000" in body["message"]
