"""Model server building blocks that are cheaper to check without a process."""

import asyncio
import inspect
import os
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from serving.modelserver import lifecycle
from serving.modelserver.loader import ScoringScript, ScriptLoadError, call_init, load_script
from serving.modelserver.responses import encode_result, error_response
from serving.modelserver.swagger import load_swagger


class ArrayLike:
    def tolist(self):
        return [1, 2]


def test_encode_result_kinds():
    assert encode_result(b"\x00raw", None).body == b"\x00raw"
    assert encode_result(b"x", None).content_type == "application/octet-stream"
    custom = web.Response(status=201, text="mine")
    assert encode_result(custom, None) is custom
    as_json = encode_result({"a": ArrayLike(), 1: "int key"}, None)
    assert as_json.content_type == "application/json"
    assert orjson.loads(as_json.body) == {"a": [1, 2], "1": "int key"}


def test_unserializable_result_is_a_scoring_error():
    response = encode_result({"x": object()}, "rid-1")
    assert response.status == 500
    body = orjson.loads(response.body)
    assert body["code"] == "ScoringScriptError" and body["request_id"] == "rid-1"


def test_error_response_shape():
    body = orjson.loads(error_response(400, "X", "why", None).body)
    assert body == {"code": "X", "message": "why", "request_id": None}


def test_swagger_prefers_the_code_folder_file(tmp_path: Path):
    generated = orjson.loads(load_swagger(tmp_path, "score"))
    assert generated["swagger"] == "2.0" and generated["info"]["title"] == "score"
    assert "post" in generated["paths"]["/score"]
    (tmp_path / "swagger.json").write_text('{"swagger": "2.0", "info": {"title": "mine"}}')
    assert orjson.loads(load_swagger(tmp_path, "score"))["info"]["title"] == "mine"


def test_swagger_of_fields_inference_schema_cannot_describe_names_them(tmp_path: Path):
    """A run() taking fields by name that inference-schema has no description of (or whose
    example JSON cannot hold) is still described: its field names, and which are required."""
    def run(a, b=1, request_headers=None):
        return a

    script = ScoringScript(path=tmp_path / "score.py", module=None, run=run,  # type: ignore[arg-type]
                           takes_headers=True, named_inputs=(("a", inspect.Parameter.empty), ("b", 1)))
    score = orjson.loads(load_swagger(tmp_path, "score", script))["paths"]["/score"]
    assert score["post"]["parameters"][0]["schema"] == {
        "type": "object", "properties": {"a": {}, "b": {}}, "required": ["a"]}
    assert [(q["name"], q["required"]) for q in score["get"]["parameters"]] == [("a", True), ("b", False)]


def test_loader_requires_run(tmp_path: Path):
    (tmp_path / "norun.py").write_text("def init():\n    pass\n")
    with pytest.raises(ScriptLoadError, match="no run"):
        load_script(tmp_path, "norun.py")
    with pytest.raises(ScriptLoadError, match="not found"):
        load_script(tmp_path, "missing.py")


def test_loader_calls_init_once(tmp_path: Path):
    (tmp_path / "counting_score.py").write_text(
        "calls = 0\ndef init():\n    global calls\n    calls += 1\ndef run(raw):\n    return calls\n"
    )
    script = load_script(tmp_path, "counting_score.py")
    call_init(script)
    assert script.run("") == 1


async def test_parent_watcher_notices_reparenting():
    reasons = []
    await asyncio.wait_for(
        lifecycle.watch_parent(os.getppid() + 100_000, reasons.append, interval=0.01), timeout=2
    )
    assert reasons and "went away" in reasons[0]


async def test_parent_watcher_keeps_waiting_while_parent_lives(monkeypatch):
    looks, getppid = [], os.getppid
    monkeypatch.setattr(lifecycle.os, "getppid", lambda: looks.append(1) or getppid())
    reasons = []
    task = asyncio.create_task(lifecycle.watch_parent(getppid(), reasons.append, interval=0.01))
    async with asyncio.timeout(5):
        while len(looks) < 5 and not task.done():  # it looked at its parent five times (deciding each time)
            await asyncio.sleep(0.01)
    assert not task.done() and reasons == []
    task.cancel()
