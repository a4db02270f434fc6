"""Every name the CLI puts into an admin API path is one percent-encoded segment
(serving.client.api_path): checked below the name rule of the command line, so a name
that got past it (another caller, a later rule) still cannot reach another resource."""

from __future__ import annotations

import argparse

import pytest

from serving import cli, rollout_wait
from serving.batch import cli as batch_cli
from serving.client import api_path

ODD = "ep1/deployments/d1?x#y é"
QUOTED = "ep1%2Fdeployments%2Fd1%3Fx%23y%20%C3%A9"


class Recorder:
    """An AdminClient that records the paths it is asked for."""

    info = argparse.Namespace(ca_cert=None, server_cert=None)

    def __init__(self) -> None:
        self.paths: list[tuple[str, str]] = []

    def get(self, path):
        self.paths.append(("GET", path))
        return {"kind": "online", "auth_mode": "key", "name": "x", "primaryKey": "k",
                "provisioning_state": "Succeeded", "version": "v", "ready_replicas": 1, "instance_count": 1}

    def get_text(self, path):
        self.paths.append(("GET", path))
        return ""

    def post(self, path, body):
        self.paths.append(("POST", path))
        return {}

    def delete(self, path):
        self.paths.append(("DELETE", path))
        return {}


def test_api_path_encodes_each_segment_whole():
    assert api_path("endpoints", ODD, "deployments", "d1") == f"/endpoints/{QUOTED}/deployments/d1"
    assert api_path("endpoints", "..") == "/endpoints/.."  # one segment; the server finds no such name
    assert api_path() == ""


@pytest.mark.parametrize("action, method, tail", [
    ("show", "GET", ""), ("delete", "DELETE", ""), ("get-credentials", "GET", ""),
    ("regenerate-keys", "POST", "/regenerate-keys"), ("get-token", "POST", "/token")])
def test_endpoint_verbs_encode_the_name(action, method, tail):
    client = Recorder()
    cli._endpoint(argparse.Namespace(action=action, name=ODD, key_type="primary", lifetime=60.0), client)
    assert (method, f"/endpoints/{QUOTED}{tail}") in client.paths  # regenerate-keys reads the endpoint first
    assert all(path.startswith(f"/endpoints/{QUOTED}") for _, path in client.paths)


@pytest.mark.parametrize("action, method, tail", [
    ("show", "GET", ""), ("delete", "DELETE", ""), ("logs", "GET", "/logs?lines=5"), ("scale", "POST", "/scale")])
def test_deployment_verbs_encode_both_names(action, method, tail):
    client = Recorder()
    cli._deployment(argparse.Namespace(action=action, name=ODD, endpoint_name=ODD, lines=5, instance_count=1),
                    client)
    assert client.paths == [(method, f"/endpoints/{QUOTED}/deployments/{QUOTED}{tail}")]


def test_apply_wait_encodes_the_names_it_polls():
    client = Recorder()
    rollout_wait._outcome(client, ODD, ODD)
    assert client.paths == [("GET", f"/endpoints/{QUOTED}/deployments/{QUOTED}")]


def test_batch_verbs_encode_the_names():
    client = Recorder()
    batch_cli.dispatch(argparse.Namespace(batch_command="batch show", name=ODD), client)
    batch_cli.dispatch(argparse.Namespace(batch_command="job logs", name=ODD, job_id="j/1"), client)
    assert client.paths == [("GET", f"/batch/endpoints/{QUOTED}"), ("GET", f"/batch/endpoints/{QUOTED}/jobs/j%2F1/logs")]
