"""Scoring scripts written for azureml-inference-server-http, served by scoregate's model server.

A real model-server child process over real sockets (127.0.0.1, OS-chosen ports); one
server for the module, started with WORKER_COUNT=1 so that requests queue behind run().
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.functional.test_modelserver import READY_PREFIX, ROOT, START_TIMEOUT, Server, server_command

MODELS = ROOT / "tests" / "fakes" / "models"


@pytest.fixture(scope="module")
def signals(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signals")


@pytest.fixture(scope="module")
def contract(tmp_path_factory, signals: Path):
    env = {**os.environ, "SIGNAL_DIR": str(signals), "WORKER_COUNT": "1"}
    server = Server(server_command(MODELS / "azureml_contract"), tmp_path_factory.mktemp("contract") / "stderr.log",
                    env=env)
    yield server
    server.stop()


async def test_run_gets_request_headers_as_azureml_passes_them(contract, http):
    """run(raw_data, request_headers) was called as run(raw_data): every request a 500 TypeError."""
    headers = {"x-custom-thing": "a", "Content-Type": "application/json", "x-request-id": "h1"}
    async with http.post(contract.url + "/score", data="headers", headers=headers) as response:
        assert response.status == 200, await response.text()
        got = await response.json()
    assert got["X-Custom-Thing"] == "a"
    assert got["Content-Type"] == "application/json"
    assert got["X-Request-Id"] == "h1"


def start_failure(code: Path, script: str) -> tuple[int, str, str]:
    done = subprocess.run(server_command(code, script), cwd=ROOT, capture_output=True, timeout=START_TIMEOUT)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.parametrize("definition, reason", [
    ("def run():\n    return 1", "takes no argument for the request body"),
    ("def run(*, data):\n    return data", "takes no argument for the request body"),
    ("def run(data, model_version):\n    return data", "requires model_version"),
])
def test_a_run_the_server_cannot_call_fails_at_load_with_the_reason(tmp_path: Path, definition: str, reason: str):
    """Before, such a script loaded, reported ready, and answered every request with a 500 TypeError."""
    (tmp_path / "score.py").write_text(textwrap.dedent("def init():\n    pass\n\n") + definition + "\n")
    code, out, err = start_failure(tmp_path, "score.py")
    assert code == 3
    assert READY_PREFIX not in out
    assert f"ScriptLoadError: run() in score.py {reason}" in err


def test_rawhttp_is_refused_at_load_with_the_way_out():
    """@rawhttp run(request) got the body as a str: every request a 500 AttributeError."""
    code, out, err = start_failure(MODELS / "rawhttp", "score.py")
    assert code == 3
    assert READY_PREFIX not in out
    assert "decorated with @rawhttp" in err and "inference_server: azmlinfsrv" in err


async def test_a_request_whose_client_left_while_it_waited_is_not_run(contract, http, signals: Path):
    """With every scoring thread busy, a request waited in the executor's queue and ran later
    even if its client had gone (the gateway's 504 after request_timeout_ms): each abandoned
    request cost a full run() and delayed every request behind it."""
    holder = asyncio.create_task(http.post(contract.url + "/score", data="hold:release-a"))
    await contract.wait_for_stderr("holding release-a")  # the only scoring thread is busy

    body = b"mark:gone"
    reader, writer = await asyncio.open_connection("127.0.0.1", contract.port)
    writer.write(b"POST /score HTTP/1.1\r\nHost: replica\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    # Once the server answered a probe sent after it, it has read that request and queued it.
    async with http.get(contract.url + "/") as probe:
        assert probe.status == 200
    writer.write_eof()  # the client gives up; the server closes its side once it sees that
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()

    (signals / "release-a").touch()
    response = await holder
    assert response.status == 200 and await response.json() == {"held": "release-a"}
    response.release()
    async with http.post(contract.url + "/score", data="mark:after") as after:
        assert after.status == 200
    assert (signals / "ran").read_text().split() == ["after"]
    await contract.wait_for_stderr("the client went away while it waited for a scoring thread")


async def test_an_exception_that_cannot_be_printed_is_still_a_json_500(contract, http):
    """str() of the exception raising made aiohttp answer text/plain 'Server got itself in trouble'."""
    async with http.post(contract.url + "/score", data="unprintable", headers={"x-request-id": "u1"}) as response:
        assert response.status == 500
        body = await response.json()
    assert body["code"] == "ScoringScriptError" and body["request_id"] == "u1"
    assert body["message"].startswith("Unprintable")


async def test_the_same_response_object_returned_twice_is_an_error_not_a_hang(contract, http):
    """The second request never got an answer: the client waited until its own timeout."""
    async with http.post(contract.url + "/score", data="same-response") as first:
        assert first.status == 200 and await first.text() == "shared"
    async with http.post(contract.url + "/score", data="same-response", headers={"x-request-id": "s2"}) as second:
        assert second.status == 500
        body = await second.json()
    assert body["request_id"] == "s2" and "already sent" in body["message"]


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    server = Server(server_command(MODELS / "input_schema"), tmp_path_factory.mktemp("schema") / "stderr.log")
    yield server
    server.stop()


async def test_an_input_schema_run_gets_the_body_fields_by_name(schema, http):
    """@input_schema scripts (inference-schema, as Azure ML's samples write them) got the
    body as a string, which the decorator cannot parse: a 500 for every request. They are
    called as Azure ML's server calls them: the JSON body's fields as keyword arguments,
    defaults for the ones it leaves out, the headers as request_headers."""
    body = {"data": [[1, 2], [3, 4]]}
    async with http.post(schema.url + "/score", json=body, headers={"x-request-id": "s1"}) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"sums": [6.0, 14.0], "request_id": "s1"}
    async with http.post(schema.url + "/score", json={**body, "scale": 1.0, "ignored": True}) as response:
        assert (await response.json())["sums"] == [3.0, 7.0]


@pytest.mark.parametrize("body, says", [
    (b'{"scale": 1.0}', "the body has no 'data', which run() requires"),
    (b"[[1, 2]]", "the body must be a JSON object"),
    (b"not json", "the body is not JSON"),
])
async def test_an_input_schema_run_refuses_a_body_without_its_fields(schema, http, body, says):
    async with http.post(schema.url + "/score", data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["code"] == "InvalidRequestBody" and says in answer["message"], answer
