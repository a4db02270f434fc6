"""Which jobs run: at most `max_running` at once, the rest wait in a FIFO queue.

The queue is the database itself (jobs not finalized, oldest first; resumed jobs before
new ones), so it survives a crash. Submitting only wakes the loop; cancelling goes
through here so a job cannot be started and cancelled at the same moment.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Callable

from . import joblog
from .jobs import CANCELED, FAILED, QUEUED, RUNNING, TERMINAL, JobRecord, JobStore
from .runner import JobRun, RunOptions, finalize, note_not_finalized, remove_job_folder

log = logging.getLogger("scoregate.batch")
RETRY_AFTER_ERROR_S = 10.0  # a job whose runner failed (e.g. batch.db cannot be written) waits this long
RUNNER_ATTEMPTS = 5  # runner failures in a row after which a job is left alone until the next start
# Retention (docs/batch.md): an ended job's folder and rows go this long after it ended.
# Azure ML keeps job history for long; a local gateway's disk is smaller: a month lets a
# user come back for an output, and bounds what piles up. 0 keeps every job.
JOB_RETENTION_DAYS = 30.0
RETENTION_SWEEP_INTERVAL_S = 3600.0  # a sweep at start, then this often
RETENTION_SWEEP_LIMIT = 100  # jobs removed per sweep at most: a sweep never holds batch.db for long


class Scheduler:
    def __init__(self, jobs: JobStore, options: RunOptions, max_running: int = 2,
                 drain_timeout_s: float = 5.0, *, retention_s: float = JOB_RETENTION_DAYS * 86400,
                 clock: Callable[[], float] = time.time, sweep_limit: int = RETENTION_SWEEP_LIMIT) -> None:
        """retention_s: how long after it ended a job is kept (0: for ever); clock: the wall
        clock jobs' times are on (time.time; tests pass their own)."""
        self._jobs, self._options = jobs, options
        self._retention_s, self._clock, self._sweep_limit = retention_s, clock, max(1, sweep_limit)
        self._unremovable: set[str] = set()  # jobs whose folder could not be removed, until the next start
        self._sweeper: asyncio.Task | None = None
        self._max_running = max(1, max_running)
        self._drain_timeout_s = drain_timeout_s
        self._runs: dict[str, JobRun] = {}
        self._cooling: dict[str, float] = {}  # job id → monotonic time it may run again (inf: next start)
        self._failures: dict[str, int] = {}  # job id → runner failures in a row
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        """Finish what a crash interrupted, then start the loop (which resumes jobs)."""
        for job in await asyncio.to_thread(self._jobs.unfinished):
            if job.status in TERMINAL:
                await self._finalize_left_over(job)
            elif job.status == RUNNING:
                log.info("batch job %s was running when the gateway stopped; resuming it", job.id)
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-scheduler")
        self.wake()
        removed = await self._sweep_logged()
        if self._retention_s > 0:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop(removed), name="batch-retention")

    async def _sweep_loop(self, removed: int) -> None:
        while not self._closed:
            # soon again if the last sweep was full (a backlog), but one bounded sweep at a time
            await asyncio.sleep(1.0 if removed >= self._sweep_limit else RETENTION_SWEEP_INTERVAL_S)
            removed = await self._sweep_logged()

    async def _sweep_logged(self) -> int:
        try:
            return await self.sweep()
        except Exception:  # retention must never stop the start nor the scheduler
            log.exception("batch retention: the sweep failed; tried again at the next one")
            return 0

    async def sweep(self) -> int:
        """Remove up to sweep_limit jobs that ended more than retention_s ago, oldest first:
        each one's folder (outputs, logs), then its rows. The number of jobs removed."""
        if self._retention_s <= 0:
            return 0
        before = self._clock() - self._retention_s
        ids = await asyncio.to_thread(self._jobs.expired, before, self._sweep_limit + len(self._unremovable))
        ids = [i for i in ids if i not in self._unremovable and i not in self._runs][:self._sweep_limit]
        removed = 0
        for job_id in ids:
            try:
                await asyncio.to_thread(remove_job_folder, self._options.jobs_dir, job_id)
            except (OSError, ValueError) as exc:  # kept, row and all, and skipped until the next start
                log.error("batch job %s: cannot remove its folder (retention); the job is kept: %s", job_id, exc)
                self._unremovable.add(job_id)
                continue
            removed += await asyncio.to_thread(self._jobs.delete_ended, job_id)
        if removed:
            log.info("batch retention: removed %d job(s) that ended more than %g day(s) ago", removed,
                     self._retention_s / 86400)
        return removed

    async def _finalize_left_over(self, job: JobRecord) -> None:
        """Write the output of a job that ended before the last stop. Whatever goes wrong
        with one job (batch.db, a corrupt spec, a bug) must not stop the gateway's start nor
        the other jobs: the job keeps its outcome, its error says why it has no output, and
        the next start tries again."""
        try:
            await finalize(self._jobs, self._options, job, job.status, job.error)
            return
        except Exception as exc:
            log.exception("batch job %s: cannot finish it at start; it keeps its status (%s) and is tried"
                          " again at the next start", job.id, job.status)
            failure = exc
        try:
            await note_not_finalized(self._jobs, self._options, job, failure)
        except Exception:  # batch.db itself is failing: the log above is all there is
            log.exception("batch job %s: cannot note in the job why it has no output", job.id)

    def wake(self) -> None:
        self._wake.set()

    def running(self) -> set[str]:
        return set(self._runs)

    async def _loop(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            async with self._lock:
                try:
                    while not self._closed and len(self._runs) < self._max_running:
                        now = time.monotonic()
                        self._cooling = {j: until for j, until in self._cooling.items() if until > now}
                        cooling = set(self._cooling)
                        job = await asyncio.to_thread(self._next, set(self._runs) | cooling)
                        if job is None:
                            break
                        try:
                            self._launch(job)
                        except Exception as exc:  # its record cannot be run: it must not block the queue
                            await self._fail_unrunnable(job, exc)
                except Exception:  # keep scheduling; the error is the store's, and logged
                    log.exception("batch scheduler: cannot pick the next job")
                    asyncio.get_running_loop().call_later(RETRY_AFTER_ERROR_S, self.wake)

    def _next(self, exclude: set[str]) -> JobRecord | None:
        waiting = [j for j in self._jobs.unfinished() if j.status in (RUNNING, QUEUED) and j.id not in exclude]
        waiting.sort(key=lambda j: j.status != RUNNING)  # stable: resumed first, then oldest
        return waiting[0] if waiting else None

    async def _fail_unrunnable(self, job: JobRecord, exc: Exception) -> None:
        """A job whose record cannot be made into a run (a damaged spec in batch.db, a record
        of an older version): it would be picked first again at every pass and hold up every
        job queued behind it, so it ends Failed, saying why; the gateway log has the details."""
        log.error("batch job %s cannot be run; it is marked Failed", job.id, exc_info=exc)
        self._cooling[job.id] = float("inf")  # never picked again by this process, whatever follows
        why = f"the job cannot be run: its record is damaged ({type(exc).__name__}; see the gateway log)"
        try:
            if await asyncio.to_thread(self._jobs.finish, job.id, FAILED, why):
                await asyncio.to_thread(joblog.append, joblog.job_log_path(self._options.jobs_dir, job.id),
                                        f"job failed: {why}", final=True)
        except Exception:  # batch.db itself is failing: the job stays as it is until the next start
            log.exception("batch job %s: cannot mark it Failed", job.id)

    def _launch(self, job: JobRecord) -> None:
        run = JobRun(job, self._jobs, self._options)
        self._runs[job.id] = run
        task = run.start()

        def done(finished: asyncio.Task) -> None:
            self._runs.pop(job.id, None)
            if finished.cancelled() or finished.exception() is None:
                self._failures.pop(job.id, None)
            else:
                failures = self._failures[job.id] = self._failures.get(job.id, 0) + 1
                if failures >= RUNNER_ATTEMPTS:  # bounded: no retry loop for ever
                    log.error("batch job %s: runner failed %d times in a row; the job is left as it is until"
                              " the next start of the gateway", job.id, failures, exc_info=finished.exception())
                    self._cooling[job.id] = float("inf")
                    self._failures.pop(job.id, None)
                    asyncio.get_running_loop().run_in_executor(None, functools.partial(
                        joblog.append, joblog.job_log_path(self._options.jobs_dir, job.id),
                        f"the batch runner failed {failures} times in a row (see the gateway log); the job"
                        " is left as it is until the next start of the gateway", final=True))
                else:
                    log.error("batch job %s: runner failed (%d of %d); trying again in %gs", job.id, failures,
                              RUNNER_ATTEMPTS, RETRY_AFTER_ERROR_S, exc_info=finished.exception())
                    self._cooling[job.id] = time.monotonic() + RETRY_AFTER_ERROR_S
                    asyncio.get_running_loop().call_later(RETRY_AFTER_ERROR_S, self.wake)
            self.wake()

        task.add_done_callback(done)

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it had already finished."""
        async with self._lock:
            if not await asyncio.to_thread(self._jobs.request_cancel, job_id):
                return False
            run = self._runs.get(job_id)
        if run is not None:
            await run.cancel()
        else:
            job = await asyncio.to_thread(self._jobs.get, job_id)
            if job is not None and not job.finalized:
                await finalize(self._jobs, self._options, job, CANCELED, job.error)
        return True

    async def close(self) -> None:
        """Stop the loop and every run; unfinished jobs stay Running and resume at start()."""
        self._closed = True
        self._wake.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(run.stop(self._drain_timeout_s) for run in list(self._runs.values())),
                             return_exceptions=True)
