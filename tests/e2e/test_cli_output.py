"""What the CLI prints: `endpoint invoke` gives the model's whole answer whatever `-o`
says."""

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

