"""Retention: ended jobs older than the retention period lose their folder and their row;
nothing else is ever removed."""

from __future__ import annotations

import pytest

from serving.batch import joblog
from serving.batch.db import Database
from serving.batch.jobs import CANCELED, COMPLETED, FAILED, JobStore
from serving.batch.runner import RunOptions
from serving.batch.scheduler import Scheduler

DAY = 24 * 3600.0
SPEC = {"deployment": {"settings": {"output_action": "append_row", "output_file_name": "predictions.csv"}},
        "input": {"kind": "rows"}}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def jobs(tmp_path):
    database = Database(tmp_path / "batch.db")
    yield JobStore(database)
    database.close()


def job_with_folder(jobs: JobStore, jobs_dir, job_id: str, status: str | None, finished_at: float | None = None):
    """A job with its folder (output and log); ended as `status` at `finished_at`, or still queued."""
    jobs.create(job_id, "ep", "main", SPEC, ["r0"], ["0"], 1)
    joblog.append(joblog.job_log_path(jobs_dir, job_id), "accepted")
    (jobs_dir / job_id / "predictions.csv").write_text("r0,v0\n")
    if status is not None:
        if status != CANCELED:
            jobs.claim(job_id)
        else:
            jobs.request_cancel(job_id)
        jobs.finish(job_id, status, None)
        with jobs._db.transaction() as db:  # when it ended, on the test's clock
            db.execute("UPDATE jobs SET finished_at=? WHERE id=?", (finished_at, job_id))


async def test_ended_jobs_past_retention_are_removed_and_nothing_else(jobs, tmp_path):
    jobs_dir = tmp_path / "state" / "batch" / "jobs"
    jobs_dir.mkdir(parents=True)
    outside = tmp_path / "state" / "keep.txt"
    outside.write_text("not a job's")
    now = 1_000 * DAY
    for n, status in enumerate((COMPLETED, FAILED, CANCELED)):
        job_with_folder(jobs, jobs_dir, f"old-{status.lower()}", status, now - 31 * DAY - n)
    job_with_folder(jobs, jobs_dir, "recent", COMPLETED, now - 29 * DAY)
    job_with_folder(jobs, jobs_dir, "queued", None)
    jobs.create("running", "ep", "main", SPEC, ["r0"], ["0"], 1)
    jobs.claim("running")
    clock = Clock(now)
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=jobs_dir), retention_s=30 * DAY, clock=clock)
    assert await scheduler.sweep() == 3
    for status in (COMPLETED, FAILED, CANCELED):
        assert jobs.get(f"old-{status.lower()}") is None
        assert not (jobs_dir / f"old-{status.lower()}").exists()
    assert jobs.get("recent").status == COMPLETED and (jobs_dir / "recent" / "predictions.csv").exists()
    assert jobs.get("queued") is not None and (jobs_dir / "queued").exists()
    assert jobs.get("running") is not None
    assert outside.read_text() == "not a job's"

    clock.now += 2 * DAY  # "recent" is now 31 days old; the queued and running jobs are never removed
    assert await scheduler.sweep() == 1
    assert jobs.get("recent") is None and not (jobs_dir / "recent").exists()
    clock.now += 1000 * DAY
    assert await scheduler.sweep() == 0
    assert jobs.get("queued") is not None and (jobs_dir / "queued").exists()
    assert jobs.get("running") is not None


async def test_the_start_sweeps(jobs, tmp_path):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    job_with_folder(jobs, jobs_dir, "old", COMPLETED, 0.0)
    job_with_folder(jobs, jobs_dir, "new", COMPLETED, 99 * DAY)
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=jobs_dir), retention_s=30 * DAY, clock=Clock(100 * DAY))
    try:
        await scheduler.start()
        assert jobs.get("old") is None and not (jobs_dir / "old").exists()
        assert jobs.get("new") is not None and (jobs_dir / "new").exists()
    finally:
        await scheduler.close()


async def test_a_sweep_removes_a_bounded_number_of_jobs(jobs, tmp_path, monkeypatch):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    for n in range(5):
        job_with_folder(jobs, jobs_dir, f"old-{n}", COMPLETED, 0.0 + n)
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=jobs_dir), retention_s=DAY, clock=Clock(100 * DAY),
                          sweep_limit=2)
    assert await scheduler.sweep() == 2
    assert [j.id for j in jobs.list("ep")] == ["old-4", "old-3", "old-2"]  # the oldest went first
    assert await scheduler.sweep() == 2
    assert await scheduler.sweep() == 1


async def test_retention_never_deletes_outside_the_jobs_folder(jobs, tmp_path):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep me")
    job_with_folder(jobs, jobs_dir, "linked", COMPLETED, 0.0)
    for child in (jobs_dir / "linked").iterdir():  # the job's folder is a link to another folder
        if child.is_dir():
            for f in child.iterdir():
                f.unlink()
            child.rmdir()
        else:
            child.unlink()
    (jobs_dir / "linked").rmdir()
    (jobs_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=jobs_dir), retention_s=DAY, clock=Clock(100 * DAY))
    assert await scheduler.sweep() == 1
    assert (elsewhere / "precious.txt").read_text() == "keep me"
    assert not (jobs_dir / "linked").exists() and jobs.get("linked") is None


async def test_retention_zero_keeps_every_job(jobs, tmp_path):
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    job_with_folder(jobs, jobs_dir, "old", COMPLETED, 0.0)
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=jobs_dir), retention_s=0, clock=Clock(10_000 * DAY))
    assert await scheduler.sweep() == 0
    assert jobs.get("old") is not None and (jobs_dir / "old" / "predictions.csv").exists()


async def test_the_service_removes_old_jobs_after_its_retention_and_refuses_a_negative_one(tmp_path):
    import time

    from serving.batch.service import BatchService

    with pytest.raises(ValueError):
        BatchService(tmp_path / "refused", [], job_retention_days=-1)
    service = BatchService(tmp_path / "state", [], job_retention_days=7)
    jobs_dir = tmp_path / "state" / "batch" / "jobs"
    jobs_dir.mkdir(parents=True)
    now = time.time()  # the service's clock is the wall clock: a day of margin either side
    job_with_folder(service.jobs, jobs_dir, "eight-days", COMPLETED, now - 8 * DAY)
    job_with_folder(service.jobs, jobs_dir, "six-days", COMPLETED, now - 6 * DAY)
    try:
        await service.start()
        assert service.jobs.get("eight-days") is None and not (jobs_dir / "eight-days").exists()
        assert service.jobs.get("six-days") is not None and (jobs_dir / "six-days").exists()
    finally:
        await service.close()


def test_removing_a_deleted_endpoints_job_folders_stays_inside_the_jobs_folder(tmp_path):
    """remove_outputs (an endpoint deleted) removed `jobs_dir / job_id` whatever the id."""
    from serving.batch.runner import remove_outputs

    jobs_dir = tmp_path / "state" / "jobs"
    (jobs_dir / "batchjob-1" / "logs").mkdir(parents=True)
    (tmp_path / "state" / "batch.db").write_text("keep me")
    options = RunOptions(jobs_dir=jobs_dir)
    remove_outputs(options, "..")  # a damaged id: refused, logged
    assert (tmp_path / "state" / "batch.db").read_text() == "keep me" and jobs_dir.is_dir()
    remove_outputs(options, "batchjob-1")
    assert not (jobs_dir / "batchjob-1").exists()
