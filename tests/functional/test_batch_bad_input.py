"""Every bad job request is refused over HTTPS with its status, a JSON error naming the
problem — and nothing is stored."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from serving.batch.standalone import StandaloneProcess
from tests.unit.batch.batch_support import BatchApi, write_batch_endpoint, write_files


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-input")
    root = write_batch_endpoint(base / "eps")
    data, outside = base / "data", base / "outside"
    write_files(data / "imgs", 3)
    write_files(outside, 2)
    (data / "empty").mkdir()
    (data / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    (data / "long.csv").write_text("a,b\n1,2\n\n3,4,5\n")
    os.symlink(outside, data / "escape")
    (data / "leaky").mkdir()  # only a link out: nothing to score (with other files, the link is a failed item)
    os.symlink(outside / "f00001.txt", data / "leaky" / "leak.txt")
    process = StandaloneProcess(base / "state", [data], [root],
                                ["--max-request-bytes", "20000", "--max-items", "1000"]).start()
    yield process, data, outside
    process.kill()


def folder(path: str) -> dict:
    return {"input": {"type": "uri_folder", "path": path}}


BAD = [
    (b"{not json", 400, "InvalidJson", "not valid JSON"),
    (b'"a string"', 400, "InvalidJson", "JSON object"),
    (b"", 400, "InvalidJson", "empty"),
    ({"inputs": {}}, 422, "ValidationError", "inputs: unknown field"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "compute": "x"}, 422, "ValidationError", "compute: unknown"),
    ({"deployment_name": "main"}, 422, "InputMissing", "input: is required"),
    ({"input": None}, 422, "InputMissing", "input: is required"),
    ({"input": ["imgs"]}, 422, "ValidationError", "input: must be an object"),
    ({"input": {"type": "uri_folder", "path": 5}}, 422, "ValidationError", "input.path"),
    ({"input": {"type": "uri_folder", "path": ""}}, 422, "ValidationError", "input.path"),
    ({"input": {"type": "inline", "data": "rows"}}, 422, "ValidationError", "input.data"),
    ({"input": {"type": "inline", "data": []}}, 422, "InputEmpty", "input.data: is empty"),
    (folder("empty"), 422, "InputEmpty", "no file"),
    (folder("nothing-here"), 422, "InputNotFound", "does not exist"),
    (folder("../outside"), 422, "InputOutsideDataRoots", "'..'"),
    (folder("imgs/../../outside"), 422, "InputOutsideDataRoots", "'..'"),
    (folder("/etc"), 422, "InputOutsideDataRoots", "outside every data root"),
    (folder("escape"), 422, "InputOutsideDataRoots", "leads outside"),
    (folder("leaky"), 422, "InputEmpty", "leak.txt: a symlink leading outside every data root (not read)"),
    (folder("http://127.0.0.1:9/data"), 422, "UriNotAllowed", "http://"),
    (folder("https://example.com/data"), 422, "UriNotAllowed", "https://"),
    (folder("azureml://datastores/workspaceblobstore/paths/x"), 422, "UriNotAllowed", "azureml://"),
    (folder("file://10.0.0.1/data"), 422, "UriNotAllowed", "must not name a host"),
    ({"input": {"type": "uri_file", "path": "imgs"}}, 422, "ValidationError", "not a file"),
    ({"input": {"type": "tabular", "path": "ragged.csv"}}, 422, "ValidationError",
     "line 3 of ragged.csv has 2 values; its header has 3 columns"),
    ({"input": {"type": "tabular", "path": "long.csv"}}, 422, "ValidationError",
     "line 4 of long.csv has 3 values; its header has 2 columns"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "deployment_name": "blue"}, 404, "DeploymentNotFound",
     "no deployment 'blue'"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "settings": {"mini_batch_size": 0}}, 422,
     "ValidationError", "settings.mini_batch_size"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "settings": {"retry_settings": {"timeout": "1"}}}, 422,
     "ValidationError", "settings.retry_settings.timeout"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "settings": {"output_file_name": "/tmp/x"}}, 422,
     "ValidationError", "settings.output_file_name"),
    ({"input": {"type": "uri_folder", "path": "imgs"}, "settings": {"output_file_name": "logs"}}, 422,
     "ValidationError", "settings.output_file_name: 'logs' is the folder of the job's worker logs"),
    ({"input": {"type": "inline", "data": list(range(1001))}}, 413, "TooManyItems", "at most 1000"),
    ({"input": {"type": "inline", "data": ["x" * 100] * 300}}, 413, "PayloadTooLarge", "exceeds 20000 bytes"),
]


@pytest.mark.parametrize("body, status, code, words", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_refused_with_a_named_problem(service, body, status, code, words):
    process = service[0]
    api = BatchApi(process)
    got, headers, raw = process.request("POST", api.base, body, api.headers)
    error = json.loads(raw)
    assert (got, error["code"]) == (status, code), error
    assert words in error["message"], error["message"]
    assert error["request_id"] == headers["x-request-id"]
    assert str(service[2]) not in error["message"] or code == "InputOutsideDataRoots"


def test_a_chunked_oversized_body_is_refused_too(service):
    process = service[0]
    api = BatchApi(process)

    def chunks():
        for _ in range(100):
            yield b" " * 1000
    got, _, raw = process.request("POST", api.base, chunks(), {**api.headers, "Transfer-Encoding": "chunked"})
    assert got == 413 and json.loads(raw)["code"] == "PayloadTooLarge"


def test_nothing_was_stored(service):
    process = service[0]
    assert BatchApi(process).list() == []
    with sqlite3.connect(process.state.root / "batch.db") as db:
        assert [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("jobs", "items", "minibatches")] == \
            [0, 0, 0]
    good = BatchApi(process).submit(folder("imgs"))  # and the service still takes good jobs
    assert BatchApi(process).wait(good["id"])["status"] == "Completed"
