"""The same score.py served by Azure ML's own inference server (azureml-inference-server-
http, an optional test dependency that .ci/run installs in a venv of its own and points
SCOREGATE_AZMLINFSRV at) and by scoregate's: both answer the same predictions."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from tests.support.gateway import REPO, wait_for

IRIS = REPO / "examples" / "iris"


def azmlinfsrv() -> str | None:
    return os.environ.get("SCOREGATE_AZMLINFSRV") or shutil.which("azmlinfsrv")


@pytest.fixture
def require_azmlinfsrv():
    if azmlinfsrv() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide azmlinfsrv (.ci/run installs azureml-inference-server-http)")
        pytest.skip("azureml-inference-server-http is not installed (set SCOREGATE_AZMLINFSRV)")


def test_same_score_py_on_azmlinfsrv_and_on_scoregate(make_gateway, tmp_path, require_azmlinfsrv):
    for name in ("blue", "green"):
        body = yaml.safe_load((IRIS / f"{name}-deployment.yml").read_text())
        body["model"]["path"] = str(IRIS / name / "model")
        body["code_configuration"]["code"] = str(IRIS / name)
        if name == "green":
            body["environment"] = {"name": "azureml-inference-server", "inference_server": "azmlinfsrv"}
            body["code_configuration"]["code"] = str(IRIS / "blue")  # the same model and score.py
            body["model"]["path"] = str(IRIS / "blue" / "model")
        (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(body))
    (tmp_path / "endpoint.yml").write_text((IRIS / "endpoint.yml").read_text())
    gw = make_gateway([str(tmp_path)])
    wait_for(lambda: all(gw.deployment("iris", d)["provisioning_state"] == "Succeeded" for d in ("blue", "green")),
             60, "both deployments ready")
    request = str(IRIS / "sample-request.json")
    ours = gw.cli_json("endpoint", "invoke", "-n", "iris", "-r", request, "-d", "blue")
    theirs = gw.cli_json("endpoint", "invoke", "-n", "iris", "-r", request, "-d", "green")
    assert theirs == ours
    assert ours["predictions"] == ["setosa", "versicolor", "virginica"]
    [replica] = gw.deployment("iris", "green")["replicas"]
    cmdline = open(f"/proc/{replica['pid']}/cmdline", "rb").read().split(b"\0")
    assert any(b"azmlinfsrv" in part for part in cmdline)
    swagger = gw.cli("endpoint", "show", "-n", "iris")
    assert json.loads(swagger.stdout)["name"] == "iris"
