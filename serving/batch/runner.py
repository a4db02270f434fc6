"""One running job: its mini-batches spread over worker processes, retried, counted.

Up to instance_count × max_concurrency_per_instance slots run at once, each with its own
worker process (started lazily, init() once, reused for the next mini-batch). A failed
or timed-out mini-batch is retried up to max_retries; after that its items count as
failed, and once failed items exceed error_threshold (-1: never) the job stops and
fails. Every outcome is in the database before it is acted on, so a restart continues
where this left off.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shutil
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import failpoints, joblog
from .jobs import (CANCELED, COMPLETED, FAILED, OUTPUT_NOT_WRITTEN, RUNNING, TERMINAL, JobRecord, JobStore,
                   MiniBatch)
from .output import write_output
from .resources import BatchDeployment
from .settings import LOGS_FOLDER
from .workers import Worker, WorkerError, WorkerInitFailed, WorkerSpec

log = logging.getLogger("scoregate.batch")


@dataclass(frozen=True)
class RunOptions:
    jobs_dir: Path
    python: str = sys.executable
    init_timeout_s: float = 300.0
    max_workers: int = 32  # per job, whatever instance_count × max_concurrency_per_instance asks
    data_roots: tuple[str, ...] = ()  # as the gateway was given them: redact_paths takes them out of errors


def redact_paths(text: str, data_roots: tuple[str, ...]) -> str:
    """`text` with every path under a data root made relative to it ('/data/in/a.json' →
    'in/a.json', the root itself '.'): a scoring script's error names the absolute paths
    run() was given, and the job view and the job log that carry it are read by key
    holders, who must not learn the server's folders."""
    return _root_pattern(data_roots).sub(lambda m: "" if m["under"] else ".", text) if data_roots else text


@functools.lru_cache(maxsize=16)
def _root_pattern(data_roots: tuple[str, ...]) -> re.Pattern:
    """Each root as given, absolute and resolved (a script may see any spelling), longest
    first so that a root inside another is taken as the nearer one; never a longer name
    that merely starts like a root (/data2 for /data)."""
    spellings = {os.path.normpath(os.path.abspath(r)) for r in data_roots}
    spellings |= {str(Path(r).resolve()) for r in data_roots}
    bare = sorted((s.rstrip("/") for s in spellings if s != "/"), key=len, reverse=True)
    under = "|".join([re.escape(s + "/") for s in bare] + (["/"] if "/" in spellings else []))
    itself = rf"|(?:{'|'.join(map(re.escape, bare))})(?![\w./-])" if bare else ""
    return re.compile(rf"(?<![\w.-])(?:(?P<under>{under}){itself})")


def output_path(options: RunOptions, job: JobRecord) -> Path:
    settings = job.spec["deployment"]["settings"]
    return options.jobs_dir / job.id / settings["output_file_name"]


async def finalize(jobs: JobStore, options: RunOptions, job: JobRecord, status: str, error: str | None) -> None:
    """Write the output file (append_row), then mark the job finished; safe to repeat.

    A job whose output cannot be written (disk full, a path taken) still ends as what
    happened — Completed, Failed or Canceled — with the failure in its error and its
    scored results kept in the database. It is left unfinalized but no longer Running, so
    the scheduler neither retries it nor starts its workers again: the output is tried
    once more at the next start only (which drops the note once it is written).

    A job may have ended otherwise while this ran: a cancel the API accepted lands first
    and the store keeps it (JobStore.finish). The job then ends as that, so that what the
    cancel answered is what the job is."""
    if await _finalize_as(jobs, options, job, status, _without_output_note(error)):
        return
    current = await asyncio.to_thread(jobs.get, job.id)
    if current is not None and not current.finalized and current.status in TERMINAL and current.status != status:
        log.info("batch job %s ended %s before it could end %s", job.id, current.status.lower(), status.lower())
        await _finalize_as(jobs, options, current, current.status, _without_output_note(current.error))


async def _finalize_as(jobs: JobStore, options: RunOptions, job: JobRecord, status: str, error: str | None) -> bool:
    """finalize, once; False if the store refused `status` (the job ended otherwise first)."""
    if job.spec["deployment"]["settings"]["output_action"] == "append_row":
        path = output_path(options, job)
        try:
            await asyncio.to_thread(write_output, jobs, job.id, path)
        except OSError as exc:
            return await _output_not_written(jobs, options, job, status, error, path, exc)
    failpoints.hit("finish_before_mark")
    if not await asyncio.to_thread(jobs.finish, job.id, status, error):
        return False
    log.info("batch job %s %s%s", job.id, status.lower(), f": {error}" if error else "")
    await _log_outcome(jobs, options, job, status, error)
    return True


async def _log_outcome(jobs: JobStore, options: RunOptions, job: JobRecord, status: str, error: str | None) -> None:
    counts = await asyncio.to_thread(jobs.counts, job.id)
    await asyncio.to_thread(
        joblog.append, joblog.job_log_path(options.jobs_dir, job.id),
        f"{status}: {counts.succeeded_items} item(s) scored, {counts.failed_items} failed,"
        f" {counts.pending_items} not scored" + (f"; {error}" if error else ""), final=True)


def _without_output_note(error: str | None) -> str | None:
    matches = list(_OUTPUT_NOTE.finditer(error or ""))  # the last: the error before it is the script's text
    return (error[:matches[-1].start()] or None) if matches else error


# The note _output_not_written adds (with or without an error before it; "partial" for a
# canceled job, and in notes written before every status had one).
_OUTPUT_NOTE = re.compile(r"(?:^|; )the (?:partial )?" + re.escape(OUTPUT_NOT_WRITTEN) + r" \(")


async def _output_not_written(jobs: JobStore, options: RunOptions, job: JobRecord, status: str,
                              error: str | None, path: Path, exc: OSError) -> bool:
    why = exc.strerror or type(exc).__name__  # not str(exc): it names server paths, and key holders read this
    if not await _note_not_written(jobs, options, job, status, error, why):
        return False
    log.error("batch job %s %s, but its output %s could not be written (tried again at the next start): %s",
              job.id, status.lower(), path, exc)
    return True


async def note_not_finalized(jobs: JobStore, options: RunOptions, job: JobRecord, exc: Exception) -> None:
    """finalize of an ended job failed unexpectedly (batch.db, a corrupt spec, a bug): its
    outcome stands, its error says it has no output and why, and the next start tries again."""
    why = f"internal error: {type(exc).__name__}, see the gateway log"
    await _note_not_written(jobs, options, job, job.status, _without_output_note(job.error), why)


async def _note_not_written(jobs: JobStore, options: RunOptions, job: JobRecord, status: str,
                            error: str | None, why: str) -> bool:
    scored = (await asyncio.to_thread(jobs.counts, job.id)).succeeded_items
    what = "the partial output" if status == CANCELED else "the output"
    note = (f"{what} could not be written ({why}): its {scored} scored item(s) are kept"
            " and the output is written again at the next start of the gateway")
    error = error or ("canceled" if status == CANCELED else None)
    note = f"{error}; {note}" if error else note
    if not await asyncio.to_thread(jobs.note_output_failure, job.id, status, note):
        return False
    await _log_outcome(jobs, options, job, status, note)
    return True


def remove_outputs(options: RunOptions, job_id: str) -> None:
    """A deleted endpoint's job folder, with the same checks as retention; best effort."""
    try:
        remove_job_folder(options.jobs_dir, job_id)
    except (OSError, ValueError) as exc:
        log.warning("batch job %s: cannot remove its folder: %s", job_id, exc)


def remove_job_folder(jobs_dir: Path, job_id: str) -> None:
    """Remove the job's own folder (retention) and nothing outside it: an id that is not one
    plain name is refused, and a folder that is a link loses the link, not what it points
    to. Raises OSError if the folder cannot be removed (the caller keeps the job's row)."""
    folder = jobs_dir / job_id
    plain = job_id not in ("", ".", "..") and "/" not in job_id and "\\" not in job_id
    if not plain or folder.parent.resolve() != jobs_dir.resolve():
        raise ValueError(f"job id {job_id!r} does not name a folder in the jobs folder")
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)  # does not follow links inside the folder


class JobRun:
    def __init__(self, job: JobRecord, jobs: JobStore, options: RunOptions) -> None:
        self.job, self._jobs, self._options = job, jobs, options
        deployment = BatchDeployment.from_dict(job.spec["deployment"])
        self.settings = deployment.settings
        self._kind = job.spec["input"]["kind"]
        self._spec = WorkerSpec(deployment.code, deployment.scoring_script, deployment.model_path,
                                deployment.environment_variables, self.settings.logging_level)
        self._pending: deque[MiniBatch] = deque()
        self._workers: set[Worker] = set()
        self._halt = self._cancel = self._closing = False
        self._fatal: str | None = None
        self._failed_items = 0
        self._done = 0  # mini-batches succeeded or failed for good, for the progress lines
        self._log_path = joblog.job_log_path(options.jobs_dir, job.id)
        self.task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"batch-job-{self.job.id}")
        return self.task

    async def cancel(self) -> None:
        """The cancel is already durable (JobStore.request_cancel); stop and finish now."""
        self._cancel = self._halt = True
        await self._kill_workers()
        if self.task is not None:
            await asyncio.shield(self.task)

    async def stop(self, grace_s: float) -> None:
        """Gateway shutdown: no new mini-batch; in-flight ones get grace_s to commit."""
        self._closing = self._halt = True
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_s)
        except TimeoutError:
            await self._kill_workers()
            await self.task

    # -- the job --------------------------------------------------------------------------
    async def _run(self) -> None:
        jobs, job = self._jobs, self.job
        if not await asyncio.to_thread(jobs.claim, job.id):
            current = await asyncio.to_thread(jobs.get, job.id)
            if current is not None and current.status == CANCELED and not current.finalized:
                await finalize(jobs, self._options, current, CANCELED, current.error)
            return
        counts = await asyncio.to_thread(jobs.counts, job.id)
        self._failed_items = counts.failed_items
        self._done = counts.succeeded + counts.failed
        if not self._over_threshold():
            self._pending = deque(await asyncio.to_thread(jobs.pending_minibatches, job.id))
            slots = min(self.settings.parallelism, self._options.max_workers, len(self._pending))
            log.info("batch job %s: %d mini-batch(es) to score on %d worker(s)", job.id, len(self._pending), slots)
            how = "resumed after a restart" if job.status == RUNNING else "started"
            await self._log(f"{how}: {len(self._pending)} of {job.mini_batches} mini-batch(es) to score"
                            f" ({job.items} item(s) in all) on {slots} worker(s)")
            await asyncio.gather(*(self._slot(n) for n in range(slots)))
        if self._cancel:
            await finalize(jobs, self._options, job, CANCELED, "canceled by the user")
        elif self._fatal:
            await finalize(jobs, self._options, job, FAILED, self._fatal)
        elif self._over_threshold():
            threshold = self.settings.error_threshold
            await finalize(jobs, self._options, job, FAILED,
                           f"{self._failed_items} item(s) failed, more than error_threshold {threshold}"
                           " (see error.failed_mini_batches)")
        elif self._pending:
            log.info("batch job %s stopped with %d mini-batch(es) left; it resumes at the next start",
                     job.id, len(self._pending))
            await self._log(f"stopped with {len(self._pending)} mini-batch(es) left (the gateway is stopping);"
                            " the job resumes at the next start", final=True)
        else:
            await finalize(jobs, self._options, job, COMPLETED, None)

    async def _log(self, message: str, final: bool = False) -> None:
        await asyncio.to_thread(joblog.append, self._log_path, message, final=final)

    async def _progress(self) -> None:
        self._done += 1
        step = max(1, self.job.mini_batches // 10)
        if self._done % step == 0 or self._done == self.job.mini_batches:
            await self._log(f"progress: {self._done} of {self.job.mini_batches} mini-batch(es) done")

    def _over_threshold(self) -> bool:
        threshold = self.settings.error_threshold
        return threshold >= 0 and self._failed_items > threshold

    async def _slot(self, number: int) -> None:
        worker: Worker | None = None
        try:
            while not self._halt and self._pending:
                mini_batch = self._pending.popleft()
                try:
                    if worker is None:
                        worker = await self._start_worker(number)
                    items = await asyncio.to_thread(self._jobs.items, self.job.id, mini_batch.start, mini_batch.stop)
                    results = await worker.score(mini_batch.idx, self._kind, [p for _, p in items],
                                                 self.settings.retry_settings.timeout)
                except WorkerInitFailed as exc:
                    worker = None
                    self._pending.appendleft(mini_batch)
                    if not self._halt:
                        self._fatal = self._public(str(exc))
                        await self._log(f"worker {number}: {self._fatal}")
                        await self._halt_all()
                    break
                except WorkerError as exc:
                    if exc.lost:
                        self._workers.discard(worker)
                        worker = None
                    if self._halt:  # canceled or shutting down: the failure is ours, not the model's
                        self._pending.appendleft(mini_batch)
                        break
                    await self._failure(mini_batch, str(exc))
                    continue
                output = results if self.settings.output_action == "append_row" else None
                await asyncio.to_thread(self._jobs.commit_minibatch, self.job.id, mini_batch, output)
                failpoints.hit("after_commit")
                await self._progress()
        except Exception:  # a bug here must not leave the job hanging: fail it, loudly
            log.exception("batch job %s: slot %d failed", self.job.id, number)
            self._fatal = self._fatal or "internal error in the batch runner (see the gateway log)"
            await self._halt_all()
        finally:
            if worker is not None:
                self._workers.discard(worker)
                await worker.close()

    async def _start_worker(self, number: int) -> Worker:
        path = self._options.jobs_dir / self.job.id / LOGS_FOLDER / f"worker-{number}.log"
        worker = Worker(self._spec, path, self._options.python)
        self._workers.add(worker)
        try:
            await worker.start(self._options.init_timeout_s)
        except BaseException:
            self._workers.discard(worker)
            await worker.kill()
            raise
        await self._log(f"worker {number} started: init() done")
        return worker

    def _public(self, error: str) -> str:
        """A worker's error as key holders may read it (job view, job log): no data-root
        paths, nor the deployment's code folder or model (a traceback names score.py by
        its absolute path; a worker that cannot start names its folder)."""
        own = tuple(str(p) for p in (self._spec.code, self._spec.model_path) if p)
        return redact_paths(error, (*self._options.data_roots, *own))

    async def _failure(self, mini_batch: MiniBatch, full_error: str) -> None:
        """Record a failed try; the gateway log keeps `full_error`, the job its public form."""
        error = self._public(full_error)
        final = mini_batch.failures + 1 > self.settings.retry_settings.max_retries
        await asyncio.to_thread(self._jobs.record_failure, self.job.id, mini_batch, error, final)
        items = await asyncio.to_thread(self._jobs.items, self.job.id, mini_batch.start,
                                        min(mini_batch.stop, mini_batch.start + 5))
        count = mini_batch.stop - mini_batch.start
        inputs = ", ".join(ref for ref, _ in items) + (", ..." if count > len(items) else "")
        await self._log(f"mini-batch {mini_batch.idx} ({count} item(s): {inputs}) failed, attempt"
                        f" {mini_batch.failures + 1} of {self.settings.retry_settings.max_retries + 1}: {error[:2000]}"
                        + ("; its items count as failed" if final else "; retrying"))
        if final:
            await self._progress()
        if not final:
            log.info("batch job %s: mini-batch %d failed (%s); retrying", self.job.id, mini_batch.idx, full_error)
            self._pending.appendleft(MiniBatch(mini_batch.idx, mini_batch.start, mini_batch.stop,
                                               mini_batch.failures + 1))
            return
        log.warning("batch job %s: mini-batch %d failed for good: %s", self.job.id, mini_batch.idx, full_error)
        self._failed_items += mini_batch.stop - mini_batch.start
        if self._over_threshold():
            await self._halt_all()

    async def _halt_all(self) -> None:
        self._halt = True
        await self._kill_workers()

    async def _kill_workers(self) -> None:
        await asyncio.gather(*(w.kill() for w in list(self._workers)), return_exceptions=True)
