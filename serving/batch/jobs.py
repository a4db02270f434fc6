"""Batch jobs in the batch database: the job, its items, its mini-batches, their results.

Exactly-once rests on one rule: a mini-batch's results and its `succeeded` mark are
written in the same transaction, and only while it is still `pending`. A crash before
that commit leaves it pending (it is scored again after restart, nothing was written);
after it, the results are durable and it is never scored again.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import orjson

from .db import Database

QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = "Queued", "Running", "Completed", "Failed", "Canceled"
TERMINAL = (COMPLETED, FAILED, CANCELED)
# In a job's error when its status is decided but its output file could not be written
# (serving.batch.runner.finalize); dropped again once a later try writes it.
OUTPUT_NOT_WRITTEN = "output could not be written"
# The one condition under which a job may end as a status (the first parameter): it is
# still Queued or Running, or it already ended as that very status (its output not yet
# written). A job's end is decided by whichever UPDATE lands first: a cancel accepted
# (request_cancel) stays Canceled even if the runner was just finishing it.
_MAY_END_AS = "status IN (?, ?, ?)"
_COLUMNS = ("id, endpoint_name, deployment_name, spec, status, finalized, error, items, mini_batches,"
            " created_at, started_at, finished_at")


@dataclass(frozen=True)
class JobRecord:
    id: str
    endpoint_name: str
    deployment_name: str
    spec: dict  # {"deployment": BatchDeployment dict (effective settings), "input": {...}}
    status: str
    finalized: bool
    error: str | None
    items: int
    mini_batches: int
    created_at: float
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class MiniBatch:
    idx: int
    start: int
    stop: int
    failures: int


@dataclass(frozen=True)
class Counts:
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    retried: int = 0
    retries: int = 0
    succeeded_items: int = 0
    failed_items: int = 0
    pending_items: int = 0


def _job(row) -> JobRecord:
    return JobRecord(row[0], row[1], row[2], _spec(row[3]), row[4], bool(row[5]), row[6], row[7],
                     row[8], row[9], row[10], row[11])


def _spec(text) -> dict:
    """A job's spec as stored; {} for one that is not a JSON object (a damaged row): every
    listing reads every row, so one such row must not break them all. The job itself cannot
    run (the scheduler fails it) and shows without settings."""
    try:
        spec = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return spec if isinstance(spec, dict) else {}


def job_settings(job: JobRecord) -> dict | None:
    """The job's effective deployment settings; None when its record is damaged."""
    deployment = job.spec.get("deployment")
    settings = deployment.get("settings") if isinstance(deployment, dict) else None
    return settings if isinstance(settings, dict) else None


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- submission -----------------------------------------------------------------------
    def create(self, job_id: str, endpoint_name: str, deployment_name: str, spec: dict,
               refs: list[str], payloads: list[str], mini_batch_size: int,
               skipped: Sequence[tuple[str, str]] = ()) -> JobRecord:
        """The job, every item and every mini-batch, in one committed transaction.

        `skipped` (reference, why) are entries of the input that are not scored (a file that
        cannot be read, a symlink out of the data roots): items after the others, in
        mini-batches that are failed from the start (0 attempts, never given to a worker),
        grouped by reason, so they count as failed items under error_threshold."""
        now, count = time.time(), len(refs)
        bounds = [(i // mini_batch_size, i, min(i + mini_batch_size, count))
                  for i in range(0, count, mini_batch_size)]
        failed: list[tuple[int, int, int, str]] = []
        ordered = sorted(skipped, key=lambda s: s[1])  # stable: each reason's entries keep their order
        start = count
        for reason, group in itertools.groupby(ordered, key=lambda s: s[1]):
            size = len(list(group))
            for offset in range(0, size, mini_batch_size):
                stop = start + min(mini_batch_size, size - offset)
                failed.append((len(bounds) + len(failed), start, stop, f"not scored: {reason}"))
                start = stop
        with self._db.transaction() as db:
            db.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES (?,?,?,?,?,0,NULL,?,?,?,NULL,NULL)",
                       (job_id, endpoint_name, deployment_name, orjson.dumps(spec).decode(), QUEUED,
                        count + len(ordered), len(bounds) + len(failed), now))
            db.executemany("INSERT INTO items VALUES (?,?,?,?)",
                           ((job_id, i, ref, payload) for i, (ref, payload) in enumerate(zip(refs, payloads))))
            db.executemany("INSERT INTO items VALUES (?,?,?,'')",  # no payload: never read
                           ((job_id, count + i, ref) for i, (ref, _) in enumerate(ordered)))
            db.executemany("INSERT INTO minibatches (job_id, idx, start, stop, status) VALUES (?,?,?,?,'pending')",
                           ((job_id, *b) for b in bounds))
            db.executemany("INSERT INTO minibatches (job_id, idx, start, stop, status, failures, error, finished_at)"
                           " VALUES (?,?,?,?,'failed',0,?,?)", ((job_id, *f, now) for f in failed))
        job = self.get(job_id)
        assert job is not None
        return job

    # -- reads ----------------------------------------------------------------------------
    def get(self, job_id: str, endpoint_name: str | None = None) -> JobRecord | None:
        with self._db.reading() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        job = _job(row) if row else None
        if job is not None and endpoint_name is not None and job.endpoint_name != endpoint_name:
            return None
        return job

    def list(self, endpoint_name: str, limit: int = 1000) -> list[JobRecord]:
        with self._db.reading() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE endpoint_name=? ORDER BY seq DESC LIMIT ?",
                              (endpoint_name, limit)).fetchall()
        return [_job(row) for row in rows]

    def unfinished(self) -> list[JobRecord]:
        """Jobs a restart must pick up again, oldest first."""
        with self._db.reading() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE finalized=0 ORDER BY seq").fetchall()
        return [_job(row) for row in rows]

    def counts(self, job_id: str) -> Counts:
        with self._db.reading() as db:
            rows = db.execute("SELECT status, count(*), sum(stop-start),"
                              " sum(CASE WHEN status='failed' THEN failures>1 ELSE failures>0 END),"
                              " sum(CASE WHEN status='failed' THEN max(failures-1, 0) ELSE failures END)"
                              " FROM minibatches WHERE job_id=? GROUP BY status", (job_id,)).fetchall()
        values: dict[str, int] = {}
        retried = retries = 0
        for status, count, items, was_retried, n_retries in rows:
            values[status], values[status + "_items"] = count, items or 0
            retried, retries = retried + (was_retried or 0), retries + (n_retries or 0)
        return Counts(values.get("succeeded", 0), values.get("failed", 0), values.get("pending", 0),
                      retried, retries, values.get("succeeded_items", 0), values.get("failed_items", 0),
                      values.get("pending_items", 0))

    def pending_minibatches(self, job_id: str) -> list[MiniBatch]:
        with self._db.reading() as db:
            rows = db.execute("SELECT idx, start, stop, failures FROM minibatches"
                              " WHERE job_id=? AND status='pending' ORDER BY idx", (job_id,)).fetchall()
        return [MiniBatch(*row) for row in rows]

    def items(self, job_id: str, start: int, stop: int) -> list[tuple[str, str]]:
        with self._db.reading() as db:
            return db.execute("SELECT ref, payload FROM items WHERE job_id=? AND idx>=? AND idx<? ORDER BY idx",
                              (job_id, start, stop)).fetchall()

    def failed_minibatches(self, job_id: str, limit: int = 20) -> list[dict]:
        with self._db.reading() as db:
            rows = db.execute("SELECT idx, start, stop, failures, error FROM minibatches"
                              " WHERE job_id=? AND status='failed' ORDER BY idx LIMIT ?", (job_id, limit)).fetchall()
            out = []
            for idx, start, stop, failures, error in rows:
                refs = [r[0] for r in db.execute(
                    "SELECT ref FROM items WHERE job_id=? AND idx>=? AND idx<? ORDER BY idx LIMIT 10",
                    (job_id, start, stop))]
                out.append({"mini_batch": idx, "items": stop - start, "inputs": refs,
                            "attempts": failures, "error": error})
        return out

    def output_rows(self, job_id: str, chunk: int = 5000) -> Iterator[tuple[str, str]]:
        """(input reference, result) of every scored item, in input order, read in chunks."""
        after = -1
        while True:
            with self._db.reading() as db:
                rows = db.execute("SELECT r.item_idx, i.ref, r.value FROM results r JOIN items i"
                                  " ON i.job_id=r.job_id AND i.idx=r.item_idx WHERE r.job_id=? AND r.item_idx>?"
                                  " ORDER BY r.item_idx LIMIT ?", (job_id, after, chunk)).fetchall()
            for _, ref, value in rows:
                yield ref, value
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    # -- progress -------------------------------------------------------------------------
    def claim(self, job_id: str) -> bool:
        """Queued → Running (a job resumed after a restart is already Running)."""
        with self._db.transaction() as db:
            return db.execute("UPDATE jobs SET status=?, started_at=coalesce(started_at, ?)"
                              " WHERE id=? AND status IN (?, ?) AND finalized=0",
                              (RUNNING, time.time(), job_id, QUEUED, RUNNING)).rowcount > 0

    def commit_minibatch(self, job_id: str, mini_batch: MiniBatch, results: list[str] | None) -> bool:
        """Results + `succeeded` in one transaction; False (nothing written) if not pending."""
        with self._db.transaction() as db:
            if not db.execute("UPDATE minibatches SET status='succeeded', finished_at=?"
                              " WHERE job_id=? AND idx=? AND status='pending'",
                              (time.time(), job_id, mini_batch.idx)).rowcount:
                return False
            if results is not None:
                db.executemany("INSERT INTO results VALUES (?,?,?)",
                               ((job_id, mini_batch.start + i, value) for i, value in enumerate(results)))
        return True

    def record_failure(self, job_id: str, mini_batch: MiniBatch, error: str, final: bool) -> None:
        with self._db.transaction() as db:
            db.execute("UPDATE minibatches SET failures=failures+1, error=?, status=?, finished_at=?"
                       " WHERE job_id=? AND idx=? AND status='pending'",
                       (error[:2000], "failed" if final else "pending", time.time() if final else None,
                        job_id, mini_batch.idx))

    def request_cancel(self, job_id: str) -> bool:
        """Make the cancel durable first; the output is written afterwards (finish)."""
        with self._db.transaction() as db:
            return db.execute("UPDATE jobs SET status=?, error=coalesce(error, 'canceled by the user')"
                              " WHERE id=? AND status IN (?, ?) AND finalized=0",
                              (CANCELED, job_id, QUEUED, RUNNING)).rowcount > 0

    def finish(self, job_id: str, status: str, error: str | None) -> bool:
        """Mark the job finished as `status`; False (nothing changed) if it is finalized or
        already ended otherwise: a cancel accepted first is never turned into Completed."""
        with self._db.transaction() as db:
            return db.execute("UPDATE jobs SET status=?, error=?, finalized=1, finished_at=coalesce(finished_at, ?)"
                              f" WHERE id=? AND finalized=0 AND {_MAY_END_AS}",
                              (status, error, time.time(), job_id, status, QUEUED, RUNNING)).rowcount > 0

    def note_output_failure(self, job_id: str, status: str, error: str) -> bool:
        """The job's outcome stands (`status`: it ended now) but its output is not written: say
        so in its error and leave it unfinalized, so that the next start tries the output
        again. Not Running any more, it is never scheduled (nor its workers started) again.
        False (nothing changed) if the job ended otherwise first, as finish."""
        assert status in TERMINAL
        with self._db.transaction() as db:
            return db.execute("UPDATE jobs SET status=?, error=?, finished_at=coalesce(finished_at, ?)"
                              f" WHERE id=? AND finalized=0 AND {_MAY_END_AS}",
                              (status, error, time.time(), job_id, status, QUEUED, RUNNING)).rowcount > 0

    # -- retention ------------------------------------------------------------------------
    def expired(self, ended_before: float, limit: int) -> list[str]:
        """Jobs ended (output written) before `ended_before`, oldest first: what retention
        may remove. Never a Queued or Running job, nor one whose output is still due."""
        with self._db.reading() as db:
            rows = db.execute("SELECT id FROM jobs WHERE finalized=1 AND status IN (?, ?, ?)"
                              " AND coalesce(finished_at, created_at) < ? ORDER BY coalesce(finished_at, created_at),"
                              " seq LIMIT ?", (*TERMINAL, ended_before, limit)).fetchall()
        return [row[0] for row in rows]

    def delete_ended(self, job_id: str) -> bool:
        """Remove an ended job's rows, in one transaction; False (nothing removed) unless it
        is ended and finalized — checked here, not only by the caller's earlier read."""
        with self._db.transaction() as db:
            if not db.execute("DELETE FROM jobs WHERE id=? AND finalized=1 AND status IN (?, ?, ?)",
                              (job_id, *TERMINAL)).rowcount:
                return False
            for table in ("results", "minibatches", "items"):
                db.execute(f"DELETE FROM {table} WHERE job_id=?", (job_id,))
        return True

    def delete_for_endpoint(self, endpoint_name: str) -> list[str]:
        with self._db.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE endpoint_name=?", (endpoint_name,))]
            for table, column in (("results", "job_id"), ("minibatches", "job_id"), ("items", "job_id"),
                                  ("jobs", "id")):
                db.executemany(f"DELETE FROM {table} WHERE {column}=?", ((i,) for i in ids))
        return ids
