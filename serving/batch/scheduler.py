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

from . import joblog
from .jobs import CANCELED, QUEUED, RUNNING, TERMINAL, JobRecord, JobStore
from .runner import JobRun, RunOptions, finalize, note_not_finalized

log = logging.getLogger("scoregate.batch")
RETRY_AFTER_ERROR_S = 10.0  # a job whose runner failed (e.g. batch.db cannot be written) waits this long
RUNNER_ATTEMPTS = 5  # runner failures in a row after which a job is left alone until the next start


class Scheduler:
    def __init__(self, jobs: JobStore, options: RunOptions, max_running: int = 2,
                 drain_timeout_s: float = 5.0) -> None:
        self._jobs, self._options = jobs, options
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
                        self._launch(job)
                except Exception:  # keep scheduling; the error is the store's, and logged
                    log.exception("batch scheduler: cannot pick the next job")
                    asyncio.get_running_loop().call_later(RETRY_AFTER_ERROR_S, self.wake)

    def _next(self, exclude: set[str]) -> JobRecord | None:
        waiting = [j for j in self._jobs.unfinished() if j.status in (RUNNING, QUEUED) and j.id not in exclude]
        waiting.sort(key=lambda j: j.status != RUNNING)  # stable: resumed first, then oldest
        return waiting[0] if waiting else None

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
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(run.stop(self._drain_timeout_s) for run in list(self._runs.values())),
                             return_exceptions=True)
