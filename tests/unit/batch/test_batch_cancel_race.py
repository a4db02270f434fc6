"""A cancel racing a job's end: whichever lands first in the store wins, and the cancel's
answer matches what the job ends as."""

from __future__ import annotations

import pytest

from serving.batch import joblog, runner
from serving.batch.db import Database
from serving.batch.jobs import CANCELED, COMPLETED, FAILED, JobStore
from serving.batch.runner import RunOptions, finalize


@pytest.fixture
def jobs(tmp_path):
    database = Database(tmp_path / "batch.db")
    yield JobStore(database)
    database.close()


def running_job(jobs: JobStore, job_id: str = "job-1"):
    spec = {"deployment": {"settings": {"output_action": "append_row", "output_file_name": "predictions.csv"}},
            "input": {"kind": "rows"}}
    job = jobs.create(job_id, "ep", "main", spec, ["r0", "r1"], ["0", "1"], 1)
    assert jobs.claim(job.id)
    for mini_batch in jobs.pending_minibatches(job.id):
        assert jobs.commit_minibatch(job.id, mini_batch, [f"v{mini_batch.idx}"])
    return jobs.get(job.id)


@pytest.mark.parametrize("outcome", [COMPLETED, FAILED])
async def test_a_cancel_accepted_while_the_runner_writes_the_output_ends_canceled(jobs, tmp_path, monkeypatch,
                                                                                 outcome):
    job = running_job(jobs)
    accepted = []
    real_write = runner.write_output

    def cancel_then_write(store, job_id, path):  # the user's cancel lands while the output is written
        if not accepted:
            accepted.append(store.request_cancel(job_id))
        return real_write(store, job_id, path)

    monkeypatch.setattr(runner, "write_output", cancel_then_write)
    await finalize(jobs, RunOptions(jobs_dir=tmp_path / "jobs"), job, outcome, None if outcome == COMPLETED
                   else "boom")
    assert accepted == [True]  # the API answered: canceled
    done = jobs.get(job.id)
    assert (done.status, done.finalized, done.error) == (CANCELED, True, "canceled by the user")
    assert (tmp_path / "jobs" / job.id / "predictions.csv").read_text() == "r0,v0\nr1,v1\n"
    outcome_lines = joblog.job_log_path(tmp_path / "jobs", job.id).read_text()
    assert "Canceled:" in outcome_lines and f"{outcome}:" not in outcome_lines


def test_finish_does_not_overwrite_an_accepted_cancel(jobs):
    job = running_job(jobs)
    assert jobs.request_cancel(job.id)
    jobs.finish(job.id, COMPLETED, None)
    assert jobs.get(job.id).status == CANCELED


def test_a_cancel_after_the_job_completed_is_refused_and_the_job_stays_completed(jobs, tmp_path):
    job = running_job(jobs)
    jobs.finish(job.id, COMPLETED, None)
    assert not jobs.request_cancel(job.id)  # the route answers 409 JobFinished (Completed)
    done = jobs.get(job.id)
    assert (done.status, done.finalized, done.error) == (COMPLETED, True, None)


async def test_an_output_failure_noted_after_an_accepted_cancel_keeps_the_job_canceled(jobs, tmp_path,
                                                                                      monkeypatch):
    job = running_job(jobs)

    def cancel_then_fail(store, job_id, path):
        if store.get(job_id).status != CANCELED:
            assert store.request_cancel(job_id)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "write_output", cancel_then_fail)
    await finalize(jobs, RunOptions(jobs_dir=tmp_path / "jobs"), job, COMPLETED, None)
    done = jobs.get(job.id)
    assert (done.status, done.finalized) == (CANCELED, False)  # the output is tried again at the next start
    assert done.error.startswith("canceled by the user; the partial output could not be written")
