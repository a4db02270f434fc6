"""What a client of azureml-inference-server-http (azmlinfsrv 1.5) sees, from scoregate's model server.

Each expectation below was read off the real azmlinfsrv (its source, and answers to the
same requests). A real model-server child process over real sockets (127.0.0.1, port 0).
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.functional.test_modelserver import Server, server_command

SCRIPT = '''
import json

def init():
    pass

def run(raw_data):
    if raw_data == "none":
        return None
    if raw_data == "big":
        return {"big": 2**70, "small": -2**65, "list": [2**64, 1.5], 2**80: "key"}
    if raw_data == "fail":
        raise ValueError("no")
    return {"raw": raw_data}
'''

SCHEMA_SCRIPT = '''
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema

def init():
    pass

@input_schema("n", StandardPythonParameterType(1))
@input_schema("tag", StandardPythonParameterType("a"))
def run(n, tag="none"):
    return {"n": n, "type": type(n).__name__, "tag": tag}
'''

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def start(folder: Path, name: str, source: str, *extra: str) -> Server:
    code = folder / name
    code.mkdir()
    (code / "score.py").write_text(textwrap.dedent(source))
    return Server(server_command(code, extra=extra), folder / f"{name}-stderr.log")


# One server of each kind for the module: the requests below leave no state behind.
@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("plain"), "plain", SCRIPT)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def impatient(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("impatient"), "impatient", SCRIPT, "--body-timeout", "0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    server = start(tmp_path_factory.mktemp("schema"), "schema", SCHEMA_SCRIPT)
    yield server
    server.stop()


async def test_get_score_runs_run_with_the_query_as_json(plain, http):
    """GET /score was a 405. azmlinfsrv calls run() with the query parameters as a JSON object
    (each value parsed as JSON if it can be, a repeated name a list), dumped by json.dumps."""
    async with http.get(plain.url + "/score?a=1&b=%5B1,2%5D&a=x&c=hello+w&d=&big=123456789012345678901") as response:
        assert response.status == 200, await response.text()
        raw = (await response.json())["raw"]
    assert raw == '{"a": [1, "x"], "b": [1, 2], "c": "hello w", "d": "", "big": 123456789012345678901}'
    async with http.get(plain.url + "/score") as response:
        assert response.status == 200 and await response.json() == {"raw": "{}"}


async def test_get_score_gives_an_input_schema_run_the_query_fields(schema, http):
    async with http.get(schema.url + "/score?n=7&tag=%22b%22") as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"n": 7, "type": "int", "tag": "b"}
    async with http.get(schema.url + "/score?tag=b", headers={"x-request-id": "g1"}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["code"] == "InvalidRequestBody" and "'n'" in body["message"] and body["request_id"] == "g1"


async def test_a_run_returning_none_answers_an_empty_object(plain, http):
    """azmlinfsrv answers {} (AMLResponse turns None into an empty JSON object); we answered null."""
    async with http.post(plain.url + "/score", data="none") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.read() == b"{}"


async def test_integers_beyond_64_bits_in_a_result_are_exact(plain, http):
    """orjson refuses them: the answer was a 500."""
    async with http.post(plain.url + "/score", data="big") as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    assert json.loads(text) == {"big": 2**70, "small": -2**65, "list": [2**64, 1.5], str(2**80): "key"}


async def test_integers_beyond_64_bits_in_the_body_reach_an_input_schema_run_exact(schema, http):
    """orjson read them as floats: run() got 1.2345678901234568e+29, not the number sent."""
    async with http.post(schema.url + "/score", data=b'{"n": 123456789012345678901234567890}',
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200, await response.text()
        assert json.loads(await response.text()) == {"n": 123456789012345678901234567890, "type": "int",
                                                     "tag": "none"}


async def test_request_ids_are_set_and_echoed_as_azmlinfsrv_does(plain, http):
    """azmlinfsrv answers x-request-id (the caller's, else a new UUID), x-ms-request-id (the caller's,
    else x-ms-client-request-id, else the request id) and x-ms-client-request-id; we sent only an
    x-request-id we were given."""
    async with http.post(plain.url + "/score", data="x") as response:
        request_id = response.headers["x-request-id"]
        assert UUID.fullmatch(request_id) and response.headers["x-ms-request-id"] == request_id
        assert "x-ms-client-request-id" not in response.headers
    async with http.post(plain.url + "/score", data="x", headers={"x-ms-client-request-id": "cli"}) as response:
        assert response.headers["x-ms-request-id"] == "cli" and response.headers["x-ms-client-request-id"] == "cli"
    async with http.post(plain.url + "/score", data="x",
                         headers={"x-ms-request-id": "legacy", "x-request-id": "r", "TraceId": "t1"}) as response:
        assert response.headers["x-request-id"] == "r" and response.headers["x-ms-request-id"] == "legacy"
        assert response.headers["x-ms-client-request-id"] == "legacy" and response.headers["TraceId"] == "t1"
    async with http.post(plain.url + "/score", data="fail") as response:
        assert response.status == 500
        assert (await response.json())["request_id"] == response.headers["x-request-id"]


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])
    return head, await reader.readexactly(length)


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
async def test_a_body_that_does_not_arrive_in_time_is_a_408(impatient, http, trickle):
    """A client that sent its head and then stalled (or sent a byte now and then) held its
    connection and request forever: no answer ever came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    writer.write(b"POST /score HTTP/1.1\r\nHost: replica\r\nContent-Length: 100\r\n"
                 b"x-request-id: slow-1\r\n\r\n0123456789")
    answer = asyncio.ensure_future(read_answer(reader))
    try:
        for _ in range(80 if trickle else 0):  # short of the 100 bytes announced
            if answer.done():
                break
            writer.write(b"x")
            await asyncio.sleep(0.05)
        head, body = await asyncio.wait_for(answer, 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 408 "), head
    assert re.search(rb"(?im)^connection: *close\r$", head), head
    error = json.loads(body)
    assert error["code"] == "ClientRequestTimeout" and error["request_id"] == "slow-1"
    assert "request body" in error["message"]
    async with http.post(impatient.url + "/score", data="after") as response:  # the server still serves
        assert response.status == 200


@pytest.mark.parametrize("which", ["plain", "schema"])
async def test_options_score_is_an_empty_200(request, http, which):
    """azmlinfsrv answers OPTIONS /score (a CORS preflight) with an empty 200 and does not call
    run(); we answered 405."""
    server = request.getfixturevalue(which)
    async with http.options(server.url + "/score", headers={"x-request-id": "o1"}) as response:
        assert response.status == 200
        assert await response.read() == b""
        assert response.headers["Allow"] == "GET, POST, OPTIONS"
        assert response.headers["x-request-id"] == "o1"
    async with http.put(server.url + "/score") as response:  # other methods stay refused
        assert response.status == 405 and "OPTIONS" in response.headers["Allow"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx"])
async def test_an_input_schema_post_that_is_not_json_is_a_415(schema, http, content_type):
    """azmlinfsrv refuses an @input_schema POST whose Content-Type is not JSON (Flask's is_json)
    with a 415, before reading the body; we ran run() with whatever the body held."""
    headers = {"x-request-id": "m1"} | ({"Content-Type": content_type} if content_type else {})
    async with http.post(schema.url + "/score", data=b'{"n": 1}', headers=headers,
                         skip_auto_headers=["Content-Type"]) as response:
        assert response.status == 415
        body = await response.json()
    assert body["code"] == "UnsupportedMediaType" and body["request_id"] == "m1"
    assert "application/json" in body["message"]
    assert (repr(content_type) if content_type else "no Content-Type") in body["message"]


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8",
                                          "application/vnd.api+json"])
async def test_an_input_schema_post_takes_every_json_content_type(schema, http, content_type):
    async with http.post(schema.url + "/score", data=b'{"n": 1}', headers={"Content-Type": content_type}) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"n": 1, "type": "int", "tag": "none"}


async def test_a_plain_run_takes_any_content_type_and_keeps_a_form_body(plain, http):
    """Only @input_schema runs check the Content-Type. A form-encoded body (curl -d sends one)
    reaches run() as sent; azmlinfsrv passes it '' (Flask has parsed the form): kept on purpose."""
    async with http.post(plain.url + "/score", data={"a": "1", "b": "x y"}) as response:
        assert response.status == 200
        assert await response.json() == {"raw": "a=1&b=x+y"}
    async with http.post(plain.url + "/score", data=b"{}", headers={"Content-Type": "text/csv"}) as response:
        assert response.status == 200 and await response.json() == {"raw": "{}"}


async def test_the_generated_swagger_describes_get_score_too(plain, schema, http):
    """swagger.json described POST /score only, though GET /score is scored too; an @input_schema
    run()'s fields were not described at all."""
    async with http.get(plain.url + "/swagger.json") as response:
        paths = (await response.json())["paths"]
    assert set(paths["/score"]) == {"get", "post"} and paths["/score"]["get"]["parameters"] == []
    assert "/swagger.json" in paths

    async with http.get(schema.url + "/swagger.json") as response:
        score = (await response.json())["paths"]["/score"]
    query = {parameter["name"]: parameter for parameter in score["get"]["parameters"]}
    assert set(query) == {"n", "tag"} and query["n"]["in"] == "query"
    assert query["n"]["required"] is True and query["tag"]["required"] is False
    body = score["post"]["parameters"][0]["schema"]
    assert body["required"] == ["n"]
    assert body["properties"] == {"n": {"type": "integer", "format": "int64"}, "tag": {"type": "string"}}
    assert "415" in score["post"]["responses"]
