"""BatchService as the gateway uses it, in-process: resources, keys, views, submit, delete."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from serving.batch.jobs import TERMINAL
from serving.batch.manifests import parse_batch_all
from serving.batch.requests import JobRequest, RequestError
from serving.batch.service import BatchService
from serving.batch.store import BatchStoreError
from serving.manifests import read_documents
from tests.unit.batch.batch_support import scored_lines, write_batch_endpoint, write_files


@pytest.fixture
async def service(tmp_path):
    root = write_batch_endpoint(tmp_path / "eps", env={"DELAY": "0.2"})
    write_files(tmp_path / "data" / "in", 30)
    batch = BatchService(tmp_path / "state", [tmp_path / "data"], scoring_url="https://gw:1")
    endpoints, deployments = parse_batch_all(read_documents([root]), batch.endpoint_names(), batch.deployment_keys())
    batch.apply(endpoints, deployments)
    await batch.start()
    yield batch
    await batch.close()


async def test_resources_keys_and_views(service):
    assert service.endpoint_names() == {"scorer"} and service.deployment_keys() == {("scorer", "main")}
    primary, secondary = service.keys("scorer")
    assert primary != secondary and service.keys("nope") is None
    assert service.regenerate_key("scorer", "primary")[1] == secondary
    assert service.regenerate_key("nope", "primary") is None
    with pytest.raises(BatchStoreError):
        service.regenerate_key("scorer", "both")
    [view] = service.list_endpoints()
    assert view["kind"] == "batch" and view["scoring_uri"] == "https://gw:1/api/v1/batch/scorer/jobs"
    assert view["deployments"] == ["main"] and view["defaults"] == {"deployment_name": "main"}
    assert service.show_deployment("scorer", "main")["settings"]["mini_batch_size"] == 10
    assert service.list_deployments("nope") is None
    with pytest.raises(BatchStoreError, match="default"):
        service.delete_deployment("scorer", "main")
    routes = {(r.method, r.path) for r in service.routes()}
    assert ("POST", "/api/v1/batch/{endpoint}/jobs") in routes
    assert ("GET", "/api/v1/batch/endpoints/{e}/keys") in {(r.method, r.path) for r in service.admin_routes()}


async def test_submit_refusals_store_nothing(service):
    with pytest.raises(RequestError) as info:
        await service.submit("scorer", JobRequest("uri_folder", path="in", deployment_name="other"))
    assert (info.value.status, info.value.code) == (404, "DeploymentNotFound")
    with pytest.raises(RequestError) as info:
        await service.submit("scorer", JobRequest("uri_folder", path="in", settings={"instance_count": 0}))
    assert info.value.status == 422 and "settings.instance_count" in info.value.message
    assert service.jobs.list("scorer") == []


async def test_delete_endpoint_cancels_its_jobs(service):
    job = await service.submit("scorer", JobRequest("uri_folder", path="in", settings={"mini_batch_size": 2}))
    for _ in range(100):
        if service.jobs.counts(job.id).succeeded:
            break
        await asyncio.sleep(0.05)
    assert service.scheduler.running() == {job.id}
    assert await service.delete_endpoint("scorer")
    assert service.scheduler.running() == set() and service.jobs.get(job.id) is None
    assert service.endpoint_names() == set() and not await service.delete_endpoint("scorer")
    assert not (service.state_dir / "batch" / "jobs" / job.id).exists()


async def test_close_leaves_a_running_job_to_resume(tmp_path, service):
    job = await service.submit("scorer", JobRequest("inline", data=list(range(40)), settings={"mini_batch_size": 5}))
    for _ in range(200):  # running: a mini-batch scored
        if service.jobs.counts(job.id).succeeded:
            break
        await asyncio.sleep(0.05)
    counts = service.jobs.counts(job.id)
    assert counts.succeeded and counts.pending, counts  # closed in the middle of the job
    await service.close()
    again = BatchService(tmp_path / "state", [tmp_path / "data"])
    await again.start()
    try:
        for _ in range(200):
            current = again.jobs.get(job.id)
            if current.status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert current.status == "Completed" and again.jobs.counts(job.id).succeeded_items == 40
        view = again.view(current, "https://x")
        assert view["output"]["ready"] and view["url"] == f"https://x/api/v1/batch/scorer/jobs/{job.id}"
    finally:
        await again.close()  # (the fixture's close() of the first service is a no-op now)


async def test_a_canceled_job_whose_output_cannot_be_written_is_written_at_the_next_start(tmp_path):
    root = write_batch_endpoint(tmp_path / "eps")
    state = tmp_path / "state"
    batch = BatchService(state, [], max_running_jobs=1)
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    await batch.scheduler.close()  # no job runs: the one submitted stays Queued until it is canceled
    job = await batch.submit("scorer", JobRequest("inline", data=[1, 2, 3]))
    jobs_dir = state / "batch" / "jobs"
    shutil.rmtree(jobs_dir / job.id)  # (its log, "accepted", went there)
    (jobs_dir / job.id).write_text("")  # the job's folder is taken by a file
    assert await batch.cancel_job(job.id)  # no exception: the cancel stands
    canceled = batch.jobs.get(job.id)
    assert canceled.status == "Canceled" and not canceled.finalized and canceled.finished_at is not None
    assert canceled.error.startswith("canceled by the user; the partial output could not be written (File exists)")
    view = batch.view(canceled, "https://x")
    assert view["status"] == "Canceled" and view["output"]["ready"] is False and view["finished_at"]
    assert view["error"]["message"] == canceled.error
    assert not await batch.cancel_job(job.id)  # it is over: a second cancel is refused (409)
    await batch.close()

    (jobs_dir / job.id).unlink()  # the operator frees the place; the next start writes the output
    again = BatchService(state, [])
    await again.start()
    try:
        done = again.jobs.get(job.id)
        assert (done.status, done.finalized, done.error) == ("Canceled", True, "canceled by the user")
        assert done.finished_at == canceled.finished_at  # when it ended, not when the output was written
        assert (jobs_dir / job.id / "predictions.csv").read_text() == ""
    finally:
        await again.close()


# A scoring script that notes every init() in $INIT_LOG (one line each): how often workers were started.
COUNTING_SCRIPT = r'''
import os

def init():
    with open(os.environ["INIT_LOG"], "a") as log:
        log.write("init\n")
    if os.environ.get("INIT_FAIL"):
        raise RuntimeError("init refuses: INIT_FAIL is set")

def run(mini_batch):
    return [str(item) for item in mini_batch]
'''


async def _ended_with_output_blocked(tmp_path, monkeypatch, env: dict) -> tuple[BatchService, object, object]:
    """A job whose output place is taken by a folder, run until it ends (or 5 s pass)."""
    from serving.batch import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "RETRY_AFTER_ERROR_S", 0.1)  # a retry loop would show at once
    root = write_batch_endpoint(tmp_path / "eps", env={"INIT_LOG": str(tmp_path / "init.log"), **env},
                                script=COUNTING_SCRIPT)
    state = tmp_path / "state"
    batch = BatchService(state, [])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    await batch.scheduler.close()  # hold the job until its output's place is taken
    job = await batch.submit("scorer", JobRequest("inline", data=[1, 2, 3]))
    blocker = state / "batch" / "jobs" / job.id / "predictions.csv"
    blocker.mkdir(parents=True)  # renaming the output over a folder fails: "Is a directory"
    (blocker / "keep").write_text("")
    from serving.batch.scheduler import Scheduler

    batch.scheduler = Scheduler(batch.jobs, batch._options)
    await batch.scheduler.start()
    for _ in range(100):
        current = batch.jobs.get(job.id)
        if current.status != "Running" and current.status != "Queued":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # ten retry periods: nothing more may happen to the job
    return batch, job, blocker


async def test_a_completed_job_whose_output_cannot_be_written_is_completed_and_written_at_the_next_start(
        tmp_path, monkeypatch):
    batch, job, blocker = await _ended_with_output_blocked(tmp_path, monkeypatch, {})
    try:
        done = batch.jobs.get(job.id)
        assert done.status == "Completed" and not done.finalized and done.finished_at is not None
        assert done.error.startswith("the output could not be written (Is a directory): its 3 scored item(s)"
                                     " are kept"), done.error
        assert str(tmp_path) not in done.error
        assert batch.jobs.counts(job.id).succeeded_items == 3  # the results are kept
        view = batch.view(done, "https://x")
        assert view["status"] == "Completed" and view["output"]["ready"] is False
        assert view["error"]["message"] == done.error
        assert batch.scheduler.running() == set()
        assert (tmp_path / "init.log").read_text() == "init\n"  # one worker, started once
        log = batch.job_logs(done, workers=False)
        assert log.count("Completed: 3 item(s) scored") == 1 and "output could not be written" in log
        assert not await batch.cancel_job(job.id)  # it is over
    finally:
        await batch.close()

    shutil.rmtree(blocker)  # the place is freed; the next start writes the output
    again = BatchService(tmp_path / "state", [])
    await again.start()
    try:
        written = again.jobs.get(job.id)
        assert (written.status, written.finalized, written.error) == ("Completed", True, None)
        assert written.finished_at == done.finished_at
        assert blocker.read_text() == "0,1\n1,2\n2,3\n"
        assert (tmp_path / "init.log").read_text() == "init\n"  # no worker for a job whose scoring is over
    finally:
        await again.close()


async def test_a_job_failed_by_init_whose_output_cannot_be_written_stays_failed_with_its_reason(
        tmp_path, monkeypatch):
    batch, job, blocker = await _ended_with_output_blocked(tmp_path, monkeypatch, {"INIT_FAIL": "1"})
    try:
        failed = batch.jobs.get(job.id)
        assert failed.status == "Failed" and not failed.finalized and failed.finished_at is not None
        assert failed.error.startswith("init() failed: RuntimeError: init refuses: INIT_FAIL is set;"
                                       " the output could not be written (Is a directory)"), failed.error
        assert (tmp_path / "init.log").read_text() == "init\n"  # init() was not run again
        assert batch.job_logs(failed, workers=False).count("Failed: 0 item(s) scored") == 1
    finally:
        await batch.close()

    shutil.rmtree(blocker)
    again = BatchService(tmp_path / "state", [])
    await again.start()
    try:
        written = again.jobs.get(job.id)
        assert (written.status, written.finalized) == ("Failed", True)
        assert written.error == "init() failed: RuntimeError: init refuses: INIT_FAIL is set"
        assert blocker.read_text() == ""
        assert (tmp_path / "init.log").read_text() == "init\n"
    finally:
        await again.close()


async def test_a_job_whose_runner_keeps_failing_is_tried_a_bounded_number_of_times(tmp_path, monkeypatch):
    """E.g. batch.db cannot be written when the job ends: a few tries, then the next start."""
    import sqlite3

    from serving.batch import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "RETRY_AFTER_ERROR_S", 0.05)
    root = write_batch_endpoint(tmp_path / "eps", script=COUNTING_SCRIPT, env={"INIT_LOG": str(tmp_path / "init")})
    batch = BatchService(tmp_path / "state", [])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    tries = []

    def finish(job_id, status, error):
        tries.append(status)
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(batch.jobs, "finish", finish)
    await batch.start()
    try:
        job = await batch.submit("scorer", JobRequest("inline", data=[1, 2]))
        for _ in range(100):
            if len(tries) >= scheduler_module.RUNNER_ATTEMPTS:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # ten retry periods more: no further try
        assert tries == ["Completed"] * scheduler_module.RUNNER_ATTEMPTS
        assert batch.scheduler.running() == set() and batch.jobs.get(job.id).status == "Running"
        assert "left as it is until the next start" in batch.job_logs(batch.jobs.get(job.id), workers=False)
    finally:
        await batch.close()


# A scoring script that prints far more than a worker log may hold, from print(), from a
# C-level write to fd 2 and from a child process, then scores.
CHATTY_SCRIPT = r'''
import os, subprocess, sys

def init():
    print("init: hello")

def run(mini_batch):
    line = "x" * 99
    for i in range(int(os.environ["LINES"])):
        print(i, line)
    os.write(2, b"fd 2: direct\n")
    subprocess.run([sys.executable, "-c", "print('child: hello')"], check=True)
    print("run: last line")
    return [str(item) for item in mini_batch]
'''


async def test_a_worker_log_is_capped_and_the_job_still_completes(tmp_path, monkeypatch):
    from serving.batch import joblog, workerlog

    limit = 1 << 20
    monkeypatch.setattr(workerlog, "LIMIT_BYTES", limit)
    root = write_batch_endpoint(tmp_path / "eps", script=CHATTY_SCRIPT, env={"LINES": "40000"})  # ~4.2 MB a run
    batch = BatchService(tmp_path / "state", [])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    try:
        job = await batch.submit("scorer", JobRequest("inline", data=[1, 2, 3], settings={"mini_batch_size": 1}))
        for _ in range(600):
            done = batch.jobs.get(job.id)
            if done.status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert (done.status, done.finalized, done.error) == ("Completed", True, None)
        folder = tmp_path / "state" / "batch" / "jobs" / job.id / "logs"
        on_disk = sum(p.stat().st_size for p in folder.glob("worker-0.log*"))
        assert on_disk <= limit + 200, sorted((p.name, p.stat().st_size) for p in folder.iterdir())
        text = joblog.read(tmp_path / "state" / "batch" / "jobs", job.id, workers=True)
        tail = text[text.index("=== worker-0.log"):]
        assert tail.rstrip().endswith("run: last line")  # the newest output is what `job logs` shows
        assert "fd 2: direct" in tail and "child: hello" in tail
    finally:
        await batch.close()


async def test_a_queued_job_that_cannot_be_run_fails_and_does_not_hold_up_the_queue(tmp_path):
    """A job whose record could not be made into a run (a damaged spec) raised in the
    scheduler's pass; it was picked first again every 10 s, and no job behind it ever ran."""
    root = write_batch_endpoint(tmp_path / "eps")
    batch = BatchService(tmp_path / "state", [], max_running_jobs=1)
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    batch.jobs.create("batchjob-damaged", "scorer", "main", {"input": {}}, ["r0"], ["0"], 1)  # no deployment
    batch.jobs.create("batchjob-garbled", "scorer", "main", {}, ["r0"], ["0"], 1)
    with batch.jobs._db.transaction() as db:  # noqa: SLF001 - a row no version of scoregate writes
        db.execute("UPDATE jobs SET spec='{not json' WHERE id='batchjob-garbled'")
    await batch.start()
    try:
        job = await batch.submit("scorer", JobRequest("inline", data=[1, 2]))
        for _ in range(300):
            if batch.jobs.get(job.id).status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        assert batch.jobs.get(job.id).status == "Completed"
        damaged = batch.jobs.get("batchjob-damaged")
        assert damaged.status == "Failed" and "the job cannot be run: its record is damaged" in damaged.error
        assert "the job cannot be run" in batch.job_logs(damaged, workers=False)
        assert batch.jobs.get("batchjob-garbled").status == "Failed"
        # the listing and the views still work, the damaged ones shown as far as they go
        views = {view["name"]: view for view in (batch.view(j, "https://gw:1") for j in batch.jobs.list("scorer"))}
        assert views[job.id]["output"]["ready"] and views["batchjob-garbled"]["settings"] == {}
    finally:
        await batch.close()


LABELS_SCRIPT = r'''
import os

def init():
    pass

def run(mini_batch):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "labels.txt")) as labels:
        return [labels.read() for _ in mini_batch]
'''


async def test_a_job_error_names_the_code_folders_files_without_the_server_path(tmp_path):
    """A scoring script's error names files of its code folder by their absolute path
    (FileNotFoundError: '/srv/…/code/labels.txt'): key holders read it in the job."""
    root = write_batch_endpoint(tmp_path / "eps", script=LABELS_SCRIPT, settings={"error_threshold": 0})
    batch = BatchService(tmp_path / "state", [])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    try:
        job = await batch.submit("scorer", JobRequest("inline", data=[1, 2]))
        for _ in range(200):
            if batch.jobs.get(job.id).status in TERMINAL:
                break
            await asyncio.sleep(0.05)
        ended = batch.jobs.get(job.id)
        errors = [f["error"] for f in batch.view(ended, "https://gw:1")["error"]["failed_mini_batches"]]
        assert errors and all("'labels.txt'" in e for e in errors), errors
        shown = " ".join(errors) + batch.job_logs(ended, workers=False)
        assert str(tmp_path) not in shown
    finally:
        await batch.close()


async def _ended(batch: BatchService, job_id: str):
    for _ in range(200):
        job = batch.jobs.get(job_id)
        if job.status in TERMINAL and job.finalized:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end: {batch.jobs.get(job_id)}")


async def test_a_folder_with_a_link_out_of_the_roots_is_scored_but_for_that_link(tmp_path):
    """The whole folder used to be refused for one such entry; now the link is a failed item
    (never read: its target's text would be in the scored log) under error_threshold."""
    root = write_batch_endpoint(tmp_path / "eps")
    data, outside = tmp_path / "data", tmp_path / "outside"
    write_files(data / "in", 3)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.txt", data / "in" / "leak.txt")
    batch = BatchService(tmp_path / "state", [data])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    try:
        strict = await batch.submit("scorer", JobRequest("uri_folder", path="in", settings={"error_threshold": 0}))
        job = await batch.submit("scorer", JobRequest("uri_folder", path="in"))
        strict, job = await _ended(batch, strict.id), await _ended(batch, job.id)
        failed = {"mini_batch": 1, "items": 1, "inputs": ["leak.txt"], "attempts": 0,
                  "error": "not scored: a symlink leading outside every data root (not read)"}
        view = batch.view(job, "https://gw:1")
        assert view["status"] == "Completed" and view["error"]["failed_mini_batches"] == [failed]
        assert view["items"] == {"total": 4, "succeeded": 3, "failed": 1, "pending": 0}
        assert view["mini_batches"] == {"total": 2, "succeeded": 1, "failed": 1, "pending": 0, "retried": 0,
                                        "retries": 0}
        assert batch.output_file(job).read_text().splitlines() == [
            f"f0000{i}.txt,scored:item-0000{i}" for i in range(3)]
        shown = batch.view(strict, "https://gw:1")  # over the threshold before anything ran: no worker
        assert shown["status"] == "Failed" and shown["items"]["pending"] == 3
        assert shown["error"]["message"].startswith("1 item(s) failed, more than error_threshold 0")
        assert "secret" not in " ".join(scored_lines(root))
        log = batch.job_logs(job, workers=False)
        assert "1 of them not scored, counted as failed: leak.txt (a symlink leading outside" in log
        assert str(outside) not in log
    finally:
        await batch.close()


async def test_a_summary_only_job_shows_no_output_file(tmp_path):
    """It showed output_file_name (and file_name "predictions.csv") though no file is written."""
    root = write_batch_endpoint(tmp_path / "eps", settings={"output_action": "summary_only"})
    batch = BatchService(tmp_path / "state", [])
    batch.apply(*parse_batch_all(read_documents([root]), set(), set()))
    await batch.start()
    try:
        job = await _ended(batch, (await batch.submit("scorer", JobRequest(
            "inline", data=[1, 2], settings={"output_file_name": "named.csv"}))).id)
        view = batch.view(job, "https://gw:1")
        assert view["status"] == "Completed" and view["output"]["ready"]
        assert view["output"]["action"] == "summary_only" and view["output"]["file_name"] is None
        assert "output_file_name" not in view["settings"] and view["settings"]["output_action"] == "summary_only"
        assert sorted(p.name for p in (tmp_path / "state" / "batch" / "jobs" / job.id).iterdir()) == ["logs"]
        appended = await _ended(batch, (await batch.submit("scorer", JobRequest(
            "inline", data=[1], settings={"output_action": "append_row"}))).id)
        assert batch.view(appended, "https://gw:1")["output"]["file_name"] == "predictions.csv"
    finally:
        await batch.close()
