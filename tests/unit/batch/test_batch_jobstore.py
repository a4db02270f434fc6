"""The job store's exactly-once rule and the atomic output file."""

from __future__ import annotations

import csv
import io

import pytest

from serving.batch.db import Database
from serving.batch.jobs import CANCELED, QUEUED, RUNNING, JobStore, MiniBatch
from serving.batch.output import write_output
from serving.batch.resources import BatchEndpoint
from serving.batch.store import BatchStore, BatchStoreError


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "batch.db")
    yield database
    database.close()


def make_job(jobs: JobStore, count=25, size=10, job_id="job-1"):
    refs = [f"r{i}" for i in range(count)]
    return jobs.create(job_id, "ep", "main", {"input": {"kind": "rows"}}, refs, [str(i) for i in range(count)], size)


def test_create_splits_into_mini_batches(db):
    jobs = JobStore(db)
    job = make_job(jobs)
    assert (job.status, job.items, job.mini_batches, job.finalized) == (QUEUED, 25, 3, False)
    assert [(m.start, m.stop) for m in jobs.pending_minibatches(job.id)] == [(0, 10), (10, 20), (20, 25)]
    assert jobs.items(job.id, 20, 25) == [(f"r{i}", str(i)) for i in range(20, 25)]


def test_a_mini_batch_commits_exactly_once(db):
    jobs = JobStore(db)
    job = make_job(jobs)
    first = jobs.pending_minibatches(job.id)[0]
    assert jobs.commit_minibatch(job.id, first, [f"v{i}" for i in range(10)])
    assert not jobs.commit_minibatch(job.id, first, ["again"] * 10)  # nothing written twice
    assert [m.idx for m in jobs.pending_minibatches(job.id)] == [1, 2]
    assert list(jobs.output_rows(job.id)) == [(f"r{i}", f"v{i}") for i in range(10)]
    counts = jobs.counts(job.id)
    assert (counts.succeeded, counts.pending, counts.succeeded_items, counts.pending_items) == (1, 2, 10, 15)


def test_failures_retries_and_counts(db):
    jobs = JobStore(db)
    job = make_job(jobs)
    second, third = jobs.pending_minibatches(job.id)[1:]
    jobs.record_failure(job.id, second, "boom", final=False)
    assert jobs.pending_minibatches(job.id)[1] == MiniBatch(1, 10, 20, 1)
    jobs.commit_minibatch(job.id, MiniBatch(1, 10, 20, 1), ["x"] * 10)
    jobs.record_failure(job.id, third, "first", final=False)
    jobs.record_failure(job.id, MiniBatch(2, 20, 25, 1), "second", final=True)
    counts = jobs.counts(job.id)
    assert (counts.succeeded, counts.failed, counts.pending) == (1, 1, 1)
    assert (counts.failed_items, counts.retried, counts.retries) == (5, 2, 2)
    failed = jobs.failed_minibatches(job.id)
    assert failed == [{"mini_batch": 2, "items": 5, "inputs": ["r20", "r21", "r22", "r23", "r24"],
                       "attempts": 2, "error": "second"}]


def test_claim_cancel_finish(db):
    jobs = JobStore(db)
    job = make_job(jobs)
    assert jobs.claim(job.id) and jobs.get(job.id).status == RUNNING
    assert jobs.claim(job.id)  # resuming after a restart is a claim too
    assert jobs.request_cancel(job.id)
    assert not jobs.claim(job.id)
    assert [j.id for j in jobs.unfinished()] == [job.id]
    jobs.finish(job.id, CANCELED, "canceled by the user")
    assert not jobs.request_cancel(job.id) and jobs.unfinished() == []
    done = jobs.get(job.id)
    assert (done.status, done.finalized, done.error) == (CANCELED, True, "canceled by the user")
    assert jobs.get(job.id, "other-endpoint") is None


def test_output_file_is_whole_and_ordered(db, tmp_path):
    jobs = JobStore(db)
    job = make_job(jobs, count=12000, size=5000)
    batches = jobs.pending_minibatches(job.id)
    for mini_batch in reversed(batches):  # finished out of order; the file is in input order
        jobs.commit_minibatch(job.id, mini_batch, [f'v,"{i}"\n' for i in range(mini_batch.start, mini_batch.stop)])
    target = tmp_path / "out" / "predictions.csv"
    assert write_output(jobs, job.id, target) == 12000
    rows = list(csv.reader(io.StringIO(target.read_text())))
    assert rows == [[f"r{i}", f'v,"{i}"\n'] for i in range(12000)]
    first = target.read_bytes()
    assert write_output(jobs, job.id, target) == 12000 and target.read_bytes() == first  # idempotent
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictions.csv"]  # no temp file left


def test_resources_keys_and_references(db):
    store = BatchStore(db)
    with pytest.raises(BatchStoreError, match="has no deployment 'main'"):
        store.apply([BatchEndpoint("ep", default_deployment="main")], [])
    assert store.list_endpoints() == []  # the refused apply left nothing
    store.apply([BatchEndpoint("ep")], [])
    keys = store.get_endpoint("ep").keys
    store.apply([BatchEndpoint("ep", description="again")], [])
    assert store.get_endpoint("ep").keys == keys  # an update keeps the keys
    new = store.regenerate_key("ep", "secondary").keys
    assert new[0] == keys[0] and new[1] != keys[1]
    assert store.regenerate_key("nope", "primary") is None
    with pytest.raises(BatchStoreError):
        store.regenerate_key("ep", "tertiary")
    assert store.delete_endpoint("ep") and not store.delete_endpoint("ep")
