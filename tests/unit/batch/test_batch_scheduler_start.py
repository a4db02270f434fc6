"""One job that cannot be finished at start must not stop the start, nor the other jobs."""

from __future__ import annotations

import logging
import sqlite3

import orjson
import pytest

from serving.batch.db import Database
from serving.batch.jobs import COMPLETED, OUTPUT_NOT_WRITTEN, JobStore
from serving.batch.runner import RunOptions
from serving.batch.scheduler import Scheduler

SPEC = {"deployment": {"settings": {"output_action": "append_row", "output_file_name": "predictions.csv"}},
        "input": {"kind": "rows"}}


class BrokenFinish(JobStore):
    """batch.db refuses to mark one job finished (e.g. 'database is locked' for too long)."""

    def __init__(self, db, bad: str) -> None:
        super().__init__(db)
        self._bad = bad

    def finish(self, job_id, status, error):
        if job_id == self._bad:
            raise sqlite3.OperationalError("database is locked")
        return super().finish(job_id, status, error)


def completed_unwritten(jobs: JobStore, job_id: str) -> None:
    """A job that completed, its output not written yet (the gateway stopped in between)."""
    jobs.create(job_id, "ep", "main", SPEC, ["r0"], ["0"], 1)
    jobs.claim(job_id)
    jobs.commit_minibatch(job_id, jobs.pending_minibatches(job_id)[0], ["v0"])
    jobs.note_output_failure(job_id, COMPLETED, "the output could not be written (x)")


def corrupt_spec(db: Database, job_id: str) -> None:
    with db.transaction() as conn:
        conn.execute("UPDATE jobs SET spec=? WHERE id=?", (orjson.dumps({"input": {}}).decode(), job_id))


@pytest.mark.parametrize("fault", ["sqlite-error", "corrupt-spec"])
async def test_a_job_that_cannot_be_finished_at_start_does_not_stop_the_start(tmp_path, caplog, fault):
    db = Database(tmp_path / "batch.db")
    jobs = BrokenFinish(db, "job-bad") if fault == "sqlite-error" else JobStore(db)
    completed_unwritten(jobs, "job-bad")
    completed_unwritten(jobs, "job-good")
    if fault == "corrupt-spec":
        corrupt_spec(db, "job-bad")
    scheduler = Scheduler(jobs, RunOptions(jobs_dir=tmp_path / "jobs"))
    try:
        with caplog.at_level(logging.ERROR, logger="scoregate.batch"):
            await scheduler.start()  # no exception: the gateway starts
        good = jobs.get("job-good")
        assert (good.status, good.finalized, good.error) == (COMPLETED, True, None)
        assert (tmp_path / "jobs" / "job-good" / "predictions.csv").read_text() == "r0,v0\n"
        bad = jobs.get("job-bad")  # still what it ended as; the user sees why it has no output
        assert (bad.status, bad.finalized) == (COMPLETED, False)
        assert OUTPUT_NOT_WRITTEN in bad.error and "next start" in bad.error
        assert any("job-bad" in record.getMessage() for record in caplog.records)
    finally:
        await scheduler.close()
        db.close()
