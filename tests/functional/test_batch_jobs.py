"""Batch jobs end to end through the batch service's HTTPS routes (serving.batch.standalone
in a child process): 10,000 items exactly once, failures vs retries and error_threshold,
timeouts and crashes, cancel, the queue of jobs, summary_only, auth, and the CLI verbs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from serving.batch.cli import dispatch, register
from serving.batch.standalone import StandaloneProcess
from serving.client import AdminClient
from tests.support.gateway import descendants
from tests.unit.batch.batch_support import (BatchApi, scored_lines, scratch_folder, write_batch_endpoint,
                                            write_files)


@pytest.fixture
def batch(tmp_path):
    """start(**endpoint settings) → (BatchApi, endpoint folder, data root, process)."""
    processes: list[StandaloneProcess] = []

    def start(settings: dict | None = None, env: dict | None = None, extra_args=(), more_endpoints=(), roots=()):
        root = write_batch_endpoint(tmp_path / "eps", settings=settings, env=env)
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        files = [root] + [write_batch_endpoint(tmp_path / "eps", name, **kw) for name, kw in more_endpoints]
        process = StandaloneProcess(tmp_path / "state", [data, *roots], files, list(extra_args)).start()
        processes.append(process)
        return BatchApi(process), root, data, process

    yield start
    for process in processes:
        process.kill()


def test_ten_thousand_files_give_exactly_one_row_each(batch, tmp_path):
    with scratch_folder(tmp_path / "scratch") as scratch:
        names = write_files(scratch / "many", 10_000)
        api, root, _, _ = batch({"mini_batch_size": 250, "instance_count": 2}, roots=[scratch])
        check_ten_thousand(api, root, names, str(scratch / "many"))


def check_ten_thousand(api: BatchApi, root: Path, names: list[str], folder: str) -> None:
    job = api.submit({"input": {"type": "uri_folder", "path": folder}})
    assert job["status"] == "Queued" and job["items"]["total"] == 10_000 and job["mini_batches"]["total"] == 40
    done = api.wait(job["id"], 60)
    assert done["status"] == "Completed", done
    assert done["items"] == {"total": 10_000, "succeeded": 10_000, "failed": 0, "pending": 0}
    rows = api.rows(job["id"])
    assert len(rows) == 10_000
    assert [r[0] for r in rows] == names  # one row per file, in input order
    assert all(value == f"scored:item-{i:05d}" for i, (_, value) in enumerate(rows))
    assert len(scored_lines(root)) == 10_000  # nothing scored twice


def test_ten_thousand_inline_rows(batch):
    api, root, _, _ = batch({"mini_batch_size": 1000, "max_concurrency_per_instance": 2})
    job = api.submit({"input": {"type": "inline", "data": [[i, "x"] for i in range(10_000)]}})
    assert api.wait(job["id"], 60)["status"] == "Completed"
    rows = api.rows(job["id"])
    assert rows == [[str(i), f'scored:[{i}, "x"]'] for i in range(10_000)]


def test_failed_items_within_and_beyond_error_threshold(batch):
    api, root, data, _ = batch({"mini_batch_size": 5, "max_concurrency_per_instance": 2})
    special = {7: "FAIL", 42: "FAIL", 13: "FLAKY"}
    write_files(data / "mixed", 60, lambda i: f"{special.get(i, 'ok')}-{i}")
    # Two mini-batches fail for good (2 tries each): 10 failed items, exactly the threshold.
    ok = api.wait(api.submit({"input": {"type": "uri_folder", "path": "mixed"},
                              "settings": {"error_threshold": 10}})["id"])
    assert ok["status"] == "Completed", ok
    assert ok["items"] == {"total": 60, "succeeded": 50, "failed": 10, "pending": 0}
    assert ok["mini_batches"] == {"total": 12, "succeeded": 10, "failed": 2, "pending": 0, "retried": 3, "retries": 3}
    failed = ok["error"]["failed_mini_batches"]
    assert [f["mini_batch"] for f in failed] == [1, 8] and all(f["attempts"] == 2 for f in failed)
    assert failed[0]["inputs"] == [f"f{i:05d}.txt" for i in range(5, 10)]
    assert "ValueError: cannot score FAIL-7" in failed[0]["error"]
    rows = api.rows(ok["id"])
    assert len(rows) == 50 and "f00007.txt" not in {r[0] for r in rows} and "f00013.txt" in {r[0] for r in rows}

    strict = api.wait(api.submit({"input": {"type": "uri_folder", "path": "mixed"},
                                  "settings": {"error_threshold": 9, "mini_batch_size": 5}})["id"])
    assert strict["status"] == "Failed"
    assert "10 item(s) failed, more than error_threshold 9" in strict["error"]["message"]
    assert strict["error"]["failed_items"] == 10
    assert strict["output"]["ready"] and len(api.rows(strict["id"])) == strict["items"]["succeeded"]


def test_timeouts_and_crashes_are_retried_then_counted(batch):
    api, _, data, process = batch({"mini_batch_size": 2, "retry_settings": {"max_retries": 1, "timeout": 0.5}})
    write_files(data / "bad", 8, lambda i: {1: "HANG", 4: "CRASH"}.get(i, f"ok-{i}"))
    done = api.wait(api.submit({"input": {"type": "uri_folder", "path": "bad"}})["id"], 30)
    assert done["status"] == "Completed" and done["items"]["failed"] == 4
    errors = {f["mini_batch"]: f["error"] for f in done["error"]["failed_mini_batches"]}
    assert "did not finish within the timeout of 0.5 s" in errors[0]
    assert "exited with code 9" in errors[2]
    assert len(api.rows(done["id"])) == 4
    assert descendants(process.process.pid) == set()  # no worker left behind


def test_init_failure_fails_the_job(batch):
    api, _, data, process = batch(more_endpoints=[("broken", {"env": {"INIT_FAIL": "1"}})])
    write_files(data / "few", 3)
    broken = BatchApi(process, "broken")
    done = broken.wait(broken.submit({"input": {"type": "uri_folder", "path": "few"}})["id"])
    assert done["status"] == "Failed"
    assert "init() failed: RuntimeError: init refuses" in done["error"]["message"]
    assert done["items"]["pending"] == 3


def test_cancel_a_running_and_a_queued_job(batch):
    api, root, data, process = batch({"mini_batch_size": 2}, env={"DELAY": "0.2"},
                                     extra_args=["--max-running-jobs", "1"])
    write_files(data / "slow", 40)
    first = api.submit({"input": {"type": "uri_folder", "path": "slow"}})
    second = api.submit({"input": {"type": "inline", "data": [1, 2, 3]}})
    api.wait(first["id"], until=lambda j: j["mini_batches"]["succeeded"] >= 1)
    assert api.show(second["id"])["status"] == "Queued"  # one running job at a time
    assert [j["id"] for j in api.list()] == [second["id"], first["id"]]  # newest first

    status, queued = api.cancel(second["id"])
    assert status == 200 and queued["status"] == "Canceled" and queued["items"]["succeeded"] == 0
    started = time.monotonic()
    status, running = api.cancel(first["id"])
    assert status == 200 and running["status"] == "Canceled" and time.monotonic() - started < 5
    assert running["error"]["message"] == "canceled by the user"
    assert 0 < running["items"]["succeeded"] < 40
    assert len(api.rows(first["id"])) == running["items"]["succeeded"]  # the part that was scored
    assert api.rows(second["id"]) == []
    status, again = api.cancel(first["id"])
    assert status == 409 and again["code"] == "JobFinished"
    assert descendants(process.process.pid) == set()


def test_summary_only_writes_counts(batch):
    api, _, data, _ = batch({"output_action": "summary_only"})
    write_files(data / "few", 12)
    done = api.wait(api.submit({"input": {"type": "uri_folder", "path": "few"}})["id"])
    status, raw = api.output(done["id"])
    body = json.loads(raw)
    assert status == 200 and body["output_action"] == "summary_only"
    assert body["items"] == {"total": 12, "succeeded": 12, "failed": 0, "pending": 0}


def test_auth_routes_and_errors(batch, tmp_path):
    api, _, data, process = batch(env={"DELAY": "3"})
    write_files(data / "few", 3)
    path = api.base
    job = api.submit({"input": {"type": "uri_folder", "path": "few"}})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        status, response_headers, raw = process.request("GET", f"{path}/{job['id']}", None, headers)
        assert status == 401 and json.loads(raw)["code"] == "Unauthorized" and json.loads(raw)["request_id"]
        assert response_headers["WWW-Authenticate"] == "Bearer"
    secondary = process.admin("GET", "/batch/endpoints/scorer/keys")["secondaryKey"]
    assert process.request("GET", path, None, {"Authorization": f"Bearer {secondary}"})[0] == 200
    status, headers, raw = api.process.request("GET", f"{path}/{job['id']}/output", None, api.headers)
    assert status == 409 and json.loads(raw)["code"] == "OutputNotReady"
    from serving.batch.client import BatchClient
    from serving.client import CliError

    with pytest.raises(CliError, match="409"):  # job download of a running job saves nothing, not even a folder
        BatchClient(AdminClient.from_state_dir(process.state.root)).download("scorer", job["id"], tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    assert headers["x-request-id"]
    cases = [("GET", "/api/v1/batch/nope/jobs", 404, "EndpointNotFound"),
             ("GET", f"{path}/batchjob-unknown", 404, "JobNotFound"),
             ("GET", f"{path}/{'x' * 300}", 404, "JobNotFound"),
             ("DELETE", f"{path}/{job['id']}", 405, "MethodNotAllowed"),
             ("GET", "/api/v1/batch/scorer/other", 404, "NotFound")]
    for method, url, status, code in cases:
        got, _, raw = process.request(method, url, None, api.headers)
        assert (got, json.loads(raw)["code"]) == (status, code), (method, url, raw)
    # a trailing slash names the same resource (it used to answer 405 "takes GET")
    got, _, raw = process.request("GET", f"{path}/", None, api.headers)
    assert got == 200 and [j["id"] for j in json.loads(raw)] == [job["id"]]
    got, _, raw = process.request("GET", f"{path}/{job['id']}/", None, api.headers)
    assert got == 200 and json.loads(raw)["id"] == job["id"]
    assert process.request("HEAD", f"{path}/{job['id']}", None, api.headers)[0] == 200  # GET routes take HEAD
    assert api.cancel(job["id"])[1]["status"] == "Canceled"


def test_cli_verbs_against_the_service(batch, tmp_path):
    api, _, data, process = batch()
    write_files(data / "few", 25)
    common = argparse.ArgumentParser(add_help=False)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="verb"), common)
    client = AdminClient.from_state_dir(process.state.root)

    def run(*argv):
        return dispatch(parser.parse_args(list(argv)), client)

    assert [e["name"] for e in run("batch", "list")] == ["scorer"]
    job = run("batch", "invoke", "--name", "scorer", "--input", str(data / "few"), "--mini-batch-size", "4", "--wait")
    assert job["status"] == "Completed" and job["mini_batches"]["total"] == 7
    assert [j["id"] for j in run("job", "list", "--name", "scorer")] == [job["id"]]
    assert run("job", "show", "--name", "scorer", "--job-id", job["id"])["items"]["succeeded"] == 25
    saved = run("job", "download", "--name", "scorer", "--job-id", job["id"], "--download-path", str(tmp_path / "dl"))
    assert Path(saved["path"]) == tmp_path / "dl" / job["id"] / "predictions.csv"
    assert len(Path(saved["path"]).read_text().splitlines()) == 25
    from serving.client import CliError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(CliError, match="cannot save the output to .*a-file/.*: Not a directory"):  # not a traceback
        run("job", "download", "--name", "scorer", "--job-id", job["id"], "--download-path", str(tmp_path / "a-file"))
    with pytest.raises(CliError) as info:
        run("batch", "invoke", "--name", "scorer", "--input", "/etc")
    assert info.value.exit_code == 2 and "outside every data root" in str(info.value)
    with pytest.raises(CliError):
        run("job", "cancel", "--name", "scorer", "--job-id", job["id"])
    write_files(data / "bad", 3, text=lambda i: "FAIL" if i == 1 else f"item-{i}")
    with pytest.raises(CliError) as info:  # --wait fails with the job: a script must not go on
        run("batch", "invoke", "--name", "scorer", "--input", str(data / "bad"), "--mini-batch-size", "1",
            "--max-retries", "0", "--error-threshold", "0", "--wait")
    assert info.value.exit_code == 1 and "Failed" in str(info.value) and "error_threshold 0" in str(info.value)
    assert info.value.result["status"] == "Failed" and info.value.result["items"]["failed"] == 1


def test_the_iris_batch_example(tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "iris-batch"
    process = StandaloneProcess(tmp_path / "state", [example / "data"], [example]).start()
    try:
        api = BatchApi(process, "iris-batch")
        files = api.wait(api.submit({"input": {"type": "uri_folder", "path": "flowers"}})["id"])
        table = api.wait(api.submit({"input": {"type": "tabular", "path": str(example / "data" / "flowers.csv")},
                                     "settings": {"mini_batch_size": 4}})["id"])
        assert files["status"] == table["status"] == "Completed"
        rows = api.rows(files["id"])
        assert [r[0] for r in rows] == [f"flower-{i:02d}.json" for i in range(1, 16)]
        species = [r[1].split()[0] for r in rows]
        assert species[:5] == ["setosa"] * 5 and species[-5:] == ["virginica"] * 5
        assert len(api.rows(table["id"])) == 15 and table["mini_batches"]["total"] == 4
    finally:
        process.kill()


def test_cancel_whose_partial_output_cannot_be_written(batch):
    """The cancel is what the caller asked for and it happened: 200 with the job, Canceled,
    and the output failure recorded on it (not a 500, not a job left half-finished)."""
    api, _, data, process = batch({"mini_batch_size": 2}, env={"DELAY": "0.2"})
    write_files(data / "slow", 40)
    job = api.submit({"input": {"type": "uri_folder", "path": "slow"}})
    api.wait(job["id"], until=lambda j: j["mini_batches"]["succeeded"] >= 1)
    blocker = process.state.root / "batch" / "jobs" / job["id"] / "predictions.csv"
    blocker.mkdir(parents=True)  # the output's place is taken by a folder: renaming over it fails
    (blocker / "keep").write_text("")
    status, canceled = api.cancel(job["id"])
    assert status == 200, canceled
    assert canceled["id"] == job["id"] and canceled["status"] == "Canceled"
    message = canceled["error"]["message"]
    assert message.startswith("canceled by the user") and "partial output could not be written" in message
    assert "Is a directory" in message and str(process.state.root) not in message  # why, but no server path
    scored = canceled["items"]["succeeded"]
    assert 0 < scored < 40 and f"{scored} scored item(s)" in message  # kept, and said so
    assert canceled["output"]["ready"] is False and canceled["finished_at"] is not None
    status, raw = api.output(job["id"])
    body = json.loads(raw)
    assert status == 409 and body["code"] == "OutputNotReady" and "could not be written" in body["message"]
    assert api.show(job["id"]) == canceled  # what the cancel answered is what the job is
    status, again = api.cancel(job["id"])
    assert status == 409 and again["code"] == "JobFinished"
    assert not list(blocker.parent.glob(".*.tmp"))  # no half-written temporary file left behind
    assert descendants(process.process.pid) == set()


def test_job_logs_show_failed_items_and_the_scoring_script_output(batch, capsys):
    api, _, data, process = batch({"mini_batch_size": 2, "retry_settings": {"max_retries": 1, "timeout": 10}})
    write_files(data / "bad", 6, lambda i: "FAIL-3" if i == 3 else f"ok-{i}")
    job = api.wait(api.submit({"input": {"type": "uri_folder", "path": "bad"}})["id"])
    assert job["status"] == "Completed" and job["items"]["failed"] == 2
    # the scoring port, with the endpoint's key: the runner's log, no server paths
    status, headers, raw = process.request("GET", f"{api.base}/{job['id']}/logs", None, api.headers)
    text = raw.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, text)
    assert "accepted: 6 item(s) of a uri_folder input in 3 mini-batch(es)" in text and "started: 3 of 3" in text
    assert ("mini-batch 1 (2 item(s): f00002.txt, f00003.txt) failed, attempt 1 of 2:"
            " ValueError: cannot score FAIL-3; retrying") in text
    assert "attempt 2 of 2: ValueError: cannot score FAIL-3; its items count as failed" in text
    assert "Completed: 4 item(s) scored, 2 failed, 0 not scored" in text
    assert str(process.state.root) not in text and "scoring 2 items" not in text
    for url, code in ((f"{api.base}/batchjob-unknown/logs", "JobNotFound"),
                      ("/api/v1/batch/nope/jobs/x/logs", "EndpointNotFound")):
        got, _, raw = process.request("GET", url, None, api.headers)
        assert got == 404 and json.loads(raw)["code"] == code and json.loads(raw)["request_id"]
    assert process.request("GET", f"{api.base}/{job['id']}/logs", None, {})[0] == 401
    assert process.request("POST", f"{api.base}/{job['id']}/logs", b"", api.headers)[0] == 405

    # `scoregate job logs`, over the admin port: the workers' logs (print, tracebacks) too
    from serving.cli import main

    state = str(process.state.root)
    assert main(["job", "logs", "--name", "scorer", "--job-id", job["id"], "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert out.startswith(text) and "=== worker-0.log (the scoring script's output) ===" in out
    assert "scoring 2 items" in out and "Traceback" in out and "ValueError: cannot score FAIL-3" in out
    assert main(["job", "logs", "--name", "scorer", "--job-id", "batchjob-unknown", "--state-dir", state]) == 1
    assert capsys.readouterr().err == "error: no job 'batchjob-unknown' on batch endpoint 'scorer'\n"
    assert main(["job", "logs", "--name", "nope", "--job-id", job["id"], "--state-dir", state]) == 1
    assert "no batch endpoint 'nope'" in capsys.readouterr().err


def test_a_damaged_job_record_fails_that_job_alone(batch):
    """A row of batch.db whose spec is not JSON made every listing a 500 and, queued, held
    up every job behind it; its output route was a 500 too."""
    import sqlite3

    api, _, _, process = batch()
    db = sqlite3.connect(process.state.root / "batch.db")
    try:
        with db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
            values = {"id": "batchjob-damaged", "endpoint_name": "scorer", "deployment_name": "main",
                      "spec": "{not json", "status": "Queued", "finalized": 0, "items": 1, "mini_batches": 1,
                      "created_at": time.time()}
            names = [c for c in columns if c in values]
            db.execute(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                       [values[n] for n in names])
    finally:
        db.close()
    good = api.wait(api.submit({"input": {"type": "inline", "data": [[1], [2]]}})["id"])
    assert good["status"] == "Completed", good
    damaged = api.show("batchjob-damaged")
    assert damaged["status"] == "Failed" and "its record is damaged" in damaged["error"]["message"]
    assert {job["id"] for job in api.list()} >= {good["id"], "batchjob-damaged"}
    status, raw = api.output("batchjob-damaged")
    assert status == 404 and json.loads(raw)["code"] == "OutputNotFound"


def test_a_file_that_vanishes_is_named_without_the_server_data_root(batch, capsys):
    """A file of a folder input removed before its mini-batch ran: the script's
    FileNotFoundError named the absolute path under the data root, in the job view and in
    the job log, which key holders read; the caller only ever sent `vanish`."""
    api, _, data, process = batch({"mini_batch_size": 1, "retry_settings": {"max_retries": 0, "timeout": 10}},
                                  env={"DELAY": "0.3"})
    write_files(data / "vanish", 3)
    job = api.submit({"input": {"type": "uri_folder", "path": "vanish"}})
    (data / "vanish" / "f00002.txt").unlink()  # the worker is still starting; the first item sleeps 0.3 s
    done = api.wait(job["id"])
    [failed] = done["error"]["failed_mini_batches"]
    assert failed["inputs"] == ["f00002.txt"]
    assert "FileNotFoundError" in failed["error"] and "'vanish/f00002.txt'" in failed["error"], failed
    status, _, raw = process.request("GET", f"{api.base}/{job['id']}/logs", None, api.headers)
    text = raw.decode()
    assert status == 200 and "'vanish/f00002.txt'" in text, text
    assert str(data) not in json.dumps(done) and str(data) not in text
    assert str(data.resolve()) not in json.dumps(done) and str(data.resolve()) not in text
    from serving.cli import main

    assert main(["job", "logs", "--name", "scorer", "--job-id", job["id"], "--state-dir",
                 str(process.state.root)]) == 0
    assert capsys.readouterr().out.startswith(text)  # the admin port's job log is the same, redacted one


def test_job_list_limit_is_checked(batch):
    """?limit=0 and -1 answered one job, 5000 was silently 1000, and abc was a 400 although
    the documented code for a bad value is 422 ValidationError."""
    api, _, _, process = batch()
    ids = [api.submit({"input": {"type": "inline", "data": [[i]]}})["id"] for i in range(3)]
    for given in ("0", "-1", "1001", "5000", "abc", "", "1.5"):
        status, _, raw = process.request("GET", f"{api.base}?limit={given}", None, api.headers)
        body = json.loads(raw)
        assert (status, body["code"]) == (422, "ValidationError"), (given, status, body)
        assert "limit" in body["message"] and "1000" in body["message"] and body["request_id"]
    for given, expected in (("1", ids[-1:]), ("2", ids[:0:-1]), ("1000", ids[::-1])):
        status, _, raw = process.request("GET", f"{api.base}?limit={given}", None, api.headers)
        assert status == 200 and [j["id"] for j in json.loads(raw)] == expected, (given, raw)


def test_job_list_limit_says_when_the_list_may_be_cut(batch, capsys):
    """`job list` showed the newest 100 jobs without saying so, and had no --limit."""
    from serving.cli import main

    api, _, _, process = batch()
    state = ["--state-dir", str(process.state.root)]
    ids = [api.submit({"input": {"type": "inline", "data": [[i]]}})["id"] for i in range(3)]
    assert main(["job", "list", "--name", "scorer", "--limit", "2", *state]) == 0
    out, err = capsys.readouterr()
    assert [j["id"] for j in json.loads(out)] == ids[:0:-1]
    assert err == "note: the newest 2 jobs are shown; there may be more (--limit N, up to 1000)\n"
    assert main(["job", "list", "--name", "scorer", "--limit", "3", "-o", "table", *state]) == 0
    out, err = capsys.readouterr()
    assert out.split()[0] == "name" and len(out.splitlines()) == 5 and err.startswith("note: the newest 3")
    assert main(["job", "list", "--name", "scorer", "--limit", "4", *state]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 3 and err == ""  # all of them: nothing to note


def test_invoke_wait_that_times_out_prints_the_job_and_exits_4(batch, capsys):
    """It exited 1 with nothing on stdout, like a failed job: a script could neither tell
    the two apart nor learn the id of the job still running."""
    from serving.cli import main

    api, _, data, process = batch({"mini_batch_size": 1}, env={"DELAY": "0.5"})
    write_files(data / "slow", 20)
    state = str(process.state.root)
    code = main(["batch", "invoke", "--name", "scorer", "--input", "slow", "--wait", "--wait-timeout", "0.3",
                 "--state-dir", state])
    out, err = capsys.readouterr()
    assert code == 4, (out, err)
    job = json.loads(out)
    assert job["status"] in ("Queued", "Running") and job["id"].startswith("batchjob-")
    assert err == f"error: job {job['id']} is still {job['status']} after 0.3 s (it goes on running)\n"
    assert api.cancel(job["id"])[1]["status"] == "Canceled"


def test_job_list_as_a_table_with_no_job_prints_nothing(batch, capsys):
    """With no job, `job list -o table` printed `[]`."""
    from serving.cli import main

    _, _, _, process = batch()
    state = ["--state-dir", str(process.state.root)]
    assert main(["job", "list", "--name", "scorer", "-o", "table", *state]) == 0
    assert capsys.readouterr() == ("", "")  # no job: no table, no line at all
    assert main(["job", "list", "--name", "scorer", *state]) == 0
    assert json.loads(capsys.readouterr().out) == []  # JSON stays a list, for scripts
