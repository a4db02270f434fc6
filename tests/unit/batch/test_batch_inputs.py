"""Job requests and inputs: every bad input refused with a status, a code and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serving.batch.inputs import DataRoots, collect
from serving.batch.requests import JobRequest, RequestError, parse_job_request


@pytest.fixture
def roots(tmp_path) -> tuple[DataRoots, Path, Path]:
    root, outside = tmp_path / "data", tmp_path / "outside"
    (root / "imgs" / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "imgs" / "b.txt").write_text("b")
    (root / "imgs" / "a.txt").write_text("a")
    (root / "imgs" / "sub" / "c.txt").write_text("c")
    (root / "one.txt").write_text("1")
    (root / "table.csv").write_text("x,y,name\n1,2.5,a\n3,4,b\n")
    (root / "rows.jsonl").write_text('{"x": 1}\n\n[2, 3]\n')
    (root / "empty").mkdir()
    (outside / "secret.txt").write_text("s")
    return DataRoots([root]), root, outside


def refused(call, status: int, code: str, words: str) -> RequestError:
    with pytest.raises(RequestError) as info:
        call()
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    assert words in info.value.message, info.value.message
    return info.value


def job(kind="uri_folder", path=None, data=None):
    return JobRequest(kind, path=path, data=data)


def test_folder_items_are_sorted_recursive_and_relative(roots):
    data_roots, root, _ = roots
    collected = collect(job(path="imgs"), data_roots, 100)
    assert collected.kind == "files"
    assert collected.refs == ["a.txt", "b.txt", "sub/c.txt"]
    assert collected.payloads == [str(root / "imgs" / n) for n in ("a.txt", "b.txt", "sub/c.txt")]
    assert collect(job(path=str(root / "imgs")), data_roots, 100).refs == collected.refs
    assert collect(job(path=f"file://{root}/imgs"), data_roots, 100).refs == collected.refs
    assert collect(job(path=f"file://localhost{root}/imgs/"), data_roots, 100).refs == collected.refs


def test_file_and_tabular_inputs(roots):
    data_roots, root, _ = roots
    one = collect(job("uri_file", "one.txt"), data_roots, 10)
    assert (one.kind, one.refs, one.payloads) == ("files", ["one.txt"], [str(root / "one.txt")])
    table = collect(job("tabular", "table.csv"), data_roots, 10)
    assert table.kind == "rows" and table.refs == ["0", "1"]
    assert [json.loads(p) for p in table.payloads] == [{"x": 1, "y": 2.5, "name": "a"},
                                                       {"x": 3, "y": 4, "name": "b"}]
    jsonl = collect(job("tabular", "rows.jsonl"), data_roots, 10)
    assert [json.loads(p) for p in jsonl.payloads] == [{"x": 1}, [2, 3]]
    inline = collect(job("inline", data=[[1, 2], {"a": None}, "text"]), data_roots, 10)
    assert inline.refs == ["0", "1", "2"] and json.loads(inline.payloads[1]) == {"a": None}


def test_csv_cells_become_numbers_only_when_written_as_plain_decimals(roots):
    """int() and float() took "1_2", other scripts' digits and padded cells: rows with
    different cells reached run() as the same numbers, and "inf" or "nan" became null."""
    data_roots, root, _ = roots
    (root / "ids.csv").write_text("id,code,x,pad,lead,big,special,sci\n"
                                  "1_2,\u0663\u0664,\uff11\uff12, 5 ,007,1e999,nan,-1.5e3\n"
                                  "12,34,12,5,7,0.5,inf,+2\n", encoding="utf-8")
    table = collect(job("tabular", "ids.csv"), data_roots, 10)
    first, second = (json.loads(p) for p in table.payloads)
    assert first == {"id": "1_2", "code": "\u0663\u0664", "x": "\uff11\uff12", "pad": " 5 ", "lead": "007",
                     "big": "1e999", "special": "nan", "sci": -1500.0}
    assert second == {"id": 12, "code": 34, "x": 12, "pad": 5, "lead": 7, "big": 0.5, "special": "inf", "sci": 2}


def test_a_csv_header_naming_a_column_twice_is_refused(roots):
    """Rows were dicts keyed by the header: the first 'a' column's values were lost."""
    data_roots, root, _ = roots
    (root / "dup.csv").write_text("\ufeffa,a,\r\n1,2,3\r\n\r\n4,5,6\r\n", encoding="utf-8")
    refused(lambda: collect(job("tabular", "dup.csv"), data_roots, 10), 422, "ValidationError",
            "names column 'a' twice")


def test_paths_leading_out_are_refused(roots, tmp_path):
    data_roots, root, outside = roots
    refused(lambda: collect(job(path="../outside"), data_roots, 10), 422, "InputOutsideDataRoots", "'..'")
    refused(lambda: collect(job(path="imgs/../../outside"), data_roots, 10), 422, "InputOutsideDataRoots", "'..'")
    refused(lambda: collect(job(path=str(outside)), data_roots, 10), 422, "InputOutsideDataRoots", "outside")
    refused(lambda: collect(job(path="/etc"), data_roots, 10), 422, "InputOutsideDataRoots", "outside")
    refused(lambda: collect(job(path="/nonexistent/x"), data_roots, 10), 422, "InputOutsideDataRoots", "outside")
    os.symlink(outside, root / "link-out")
    refused(lambda: collect(job(path="link-out"), data_roots, 10), 422, "InputOutsideDataRoots", "leads outside")
    os.symlink(outside, root / "imgs" / "sub" / "escape")  # a folder out: the same
    os.symlink(outside / "secret.txt", root / "imgs" / "sneaky.txt")
    collected = collect(job(path="imgs"), data_roots, 10)  # the rest is scored; the links never read
    assert collected.refs == ["a.txt", "b.txt", "sub/c.txt"]
    assert not any(str(outside) in p for p in collected.payloads)
    assert collected.skipped == (("sneaky.txt", "a symlink leading outside every data root (not read)"),
                                 ("sub/escape", "a symlink leading outside every data root (not read)"))


def test_bad_entries_of_a_folder_are_skipped_and_reported_not_the_whole_folder_refused(roots):
    """One broken link, a name that is not UTF-8 or a link out of the roots refused the
    whole folder; Azure ML scores the files it can and reports the others as failed."""
    data_roots, root, outside = roots
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "good.txt").write_text("g")
    os.symlink(mixed / "gone.txt", mixed / "broken.txt")
    os.symlink(outside / "secret.txt", mixed / "leak.txt")
    with open(os.path.join(os.fsencode(mixed), b"bad-\xff.txt"), "w") as handle:
        handle.write("x")
    collected = collect(job(path="mixed"), data_roots, 10)
    assert (collected.refs, collected.payloads) == (["good.txt"], [str(mixed / "good.txt")])
    assert collected.skipped == (("bad-\\xff.txt", "its name is not valid UTF-8"),
                                 ("broken.txt", "a broken or looping symlink"),
                                 ("leak.txt", "a symlink leading outside every data root (not read)"))
    refused(lambda: collect(job(path="mixed"), data_roots, 3), 422, "TooManyItems", "more than 3")  # all count
    (mixed / "good.txt").unlink()  # nothing left that can be scored: the job is impossible, refused
    error = refused(lambda: collect(job(path="mixed"), data_roots, 10), 422, "InputEmpty", "no file to score")
    assert "leak.txt: a symlink leading outside" in error.message and str(outside) not in error.message


def test_symlinks_inside_the_roots_are_followed_once(roots):
    data_roots, root, _ = roots
    os.symlink(root / "imgs", root / "alias")
    os.symlink(root / "imgs", root / "imgs" / "sub" / "loop")  # a cycle: walked once
    collected = collect(job(path="alias"), data_roots, 100)
    assert collected.refs == ["a.txt", "b.txt", "sub/c.txt"]


@pytest.mark.parametrize("path, code, words", [
    ("http://example.com/data", "UriNotAllowed", "http://"),
    ("https://10.0.0.1/x", "UriNotAllowed", "https://"),
    ("azureml://datastores/x/paths/y", "UriNotAllowed", "azureml://"),
    ("azureml:my-data:1", "UriNotAllowed", "azureml://"),
    ("file://otherhost/data/imgs", "UriNotAllowed", "must not name a host"),
    ("nope", "InputNotFound", "does not exist"),
])
def test_uris_and_missing_paths(roots, path, code, words):
    refused(lambda: collect(job(path=path), roots[0], 10), 422, code, words)


def test_wrong_kinds_empty_and_too_many(roots):
    data_roots = roots[0]
    refused(lambda: collect(job("uri_folder", "one.txt"), data_roots, 10), 422, "ValidationError", "not a folder")
    refused(lambda: collect(job("uri_file", "imgs"), data_roots, 10), 422, "ValidationError", "not a file")
    refused(lambda: collect(job("tabular", "one.txt"), data_roots, 10), 422, "ValidationError", ".csv or .jsonl")
    refused(lambda: collect(job(path="empty"), data_roots, 10), 422, "InputEmpty", "no file")
    refused(lambda: collect(job(path="imgs"), data_roots, 2), 422, "TooManyItems", "more than 2")
    refused(lambda: collect(job("inline", data=[1, 2, 3]), data_roots, 2), 413, "TooManyItems", "at most 2")
    refused(lambda: collect(job(path="imgs"), DataRoots([]), 10), 422, "InputOutsideDataRoots", "--data-root")


@pytest.mark.parametrize("raw, status, code, words", [
    (b"", 400, "InvalidJson", "empty"),
    (b"{nope", 400, "InvalidJson", "not valid JSON"),
    (b"[1, 2]", 400, "InvalidJson", "JSON object"),
    (b"{}", 422, "InputMissing", "input: is required"),
    (b'{"input": "imgs"}', 422, "ValidationError", "input: must be an object"),
    (b'{"input": {"type": "folder", "path": "x"}}', 422, "ValidationError", "input.type"),
    (b'{"input": {"type": "uri_folder"}}', 422, "ValidationError", "input.path"),
    (b'{"input": {"type": "uri_folder", "path": 7}}', 422, "ValidationError", "input.path"),
    (b'{"input": {"type": "uri_folder", "path": "x", "data": []}}', 422, "ValidationError", "input.data: unknown"),
    (b'{"input": {"type": "inline", "data": {}}}', 422, "ValidationError", "input.data: must be a list"),
    (b'{"input": {"type": "inline", "data": []}}', 422, "InputEmpty", "input.data: is empty"),
    (b'{"input": {"type": "inline", "data": [1]}, "priority": 1}', 422, "ValidationError", "priority: unknown"),
    (b'{"input": {"type": "inline", "data": [1]}, "deployment_name": 5}', 422, "ValidationError", "deployment_name"),
    (b'{"input": {"type": "inline", "data": [1]}, "settings": []}', 422, "ValidationError", "settings: must be"),
])
def test_request_bodies(raw, status, code, words):
    refused(lambda: parse_job_request(raw), status, code, words)


def test_a_good_request():
    request = parse_job_request(b'{"input": {"type": "uri_folder", "path": "imgs", "mode": "ro_mount"},'
                                b' "deployment_name": "main", "settings": {"mini_batch_size": 3}}')
    assert request == JobRequest("uri_folder", path="imgs", deployment_name="main", settings={"mini_batch_size": 3})


def test_a_byte_order_mark_is_not_part_of_the_first_column(roots):
    """Excel's "CSV UTF-8" (and many Windows tools) start the file with a BOM."""
    data_roots, root, _ = roots
    (root / "excel.csv").write_bytes(b"\xef\xbb\xbfx,name\r\n1,a\r\n")
    (root / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"x": 1}\n')
    table = collect(job("tabular", "excel.csv"), data_roots, 10)
    assert [json.loads(p) for p in table.payloads] == [{"x": 1, "name": "a"}]
    jsonl = collect(job("tabular", "bom.jsonl"), data_roots, 10)
    assert [json.loads(p) for p in jsonl.payloads] == [{"x": 1}]
