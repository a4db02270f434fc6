"""A job's own log: what the runner did with it, in STATE_DIR/batch/jobs/JOB/logs/job.log.

One line per event, UTC time first: started or resumed, workers started, every failed
mini-batch (its first inputs and the error, and whether it is retried), progress every
10 % of the mini-batches, and how the job ended. Bounded: at most LIMIT_BYTES (1 MiB);
past LIMIT_BYTES - RESERVE_BYTES only the lines that say how the job ended are still
written (after one line saying that others were dropped), so a job with a million
failures still shows its outcome. Lines carry what the job view already shows (errors,
input references) and no server paths: key holders read it on the scoring port.

Writing never fails the job: a log that cannot be written (disk full, the job's folder
taken) is skipped. The scoring script's own output (print, logging, tracebacks) is not
here but in the worker logs next to it (logs/worker-N.log and, once rotated,
worker-N.log.1: serving.batch.workerlog, capped at 10 MiB together).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from .settings import LOGS_FOLDER

LOG_NAME = "job.log"
LIMIT_BYTES = 1 << 20
RESERVE_BYTES = 16 * 1024  # kept for the lines that say how the job ended
WORKER_TAIL_BYTES = 256 * 1024  # of each worker log, when the logs are read
_DROPPED = "log limit reached: further progress lines are dropped (the outcome is still written)"
_WORKER_LOG = re.compile(r"^worker-(\d+)\.log\Z")
_lock = threading.Lock()  # one line at a time across every job: the size check and the write
log = logging.getLogger("scoregate.batch")


def job_log_path(jobs_dir: Path, job_id: str) -> Path:
    return Path(jobs_dir) / job_id / LOGS_FOLDER / LOG_NAME


def append(path: Path, message: str, *, final: bool = False) -> None:
    """Add one line (final: a line about how the job ended, written while under the hard limit)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{stamp} {message.replace(chr(10), ' ')}\n".encode("utf-8", "replace")
    try:
        with _lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                size = handle.tell()
                soft = LIMIT_BYTES - RESERVE_BYTES
                if not final and size + len(line) > soft:
                    if size <= soft:  # the first line dropped: say so, once
                        handle.write(f"{stamp} {_DROPPED}\n".encode()[:LIMIT_BYTES - size])
                    return
                if size + len(line) > LIMIT_BYTES:  # a final line, cut to what is left
                    if size >= LIMIT_BYTES - 1:
                        return
                    line = line[:LIMIT_BYTES - size - 1] + b"\n"
                handle.write(line)
    except OSError as exc:
        log.warning("batch job log %s cannot be written: %s", path, exc)


def read(jobs_dir: Path, job_id: str, *, workers: bool) -> str:
    """The job's log; with workers, then the tail (WORKER_TAIL_BYTES) of each worker log."""
    folder = Path(jobs_dir) / job_id / LOGS_FOLDER
    parts = [_read_tail([folder / LOG_NAME], LIMIT_BYTES)]
    if workers:
        try:
            names = sorted((int(m[1]), m[0]) for m in map(_WORKER_LOG.match, (p.name for p in folder.iterdir())) if m)
        except OSError:
            names = []
        for _, name in names:
            parts.append(f"\n=== {name} (the scoring script's output) ===\n")
            parts.append(_read_tail([folder / f"{name}.1", folder / name], WORKER_TAIL_BYTES))
    return "".join(parts)


def _read_tail(paths: list[Path], limit: int) -> str:
    """The last `limit` bytes of the files taken one after the other (a worker log after
    the part it was rotated from, serving.batch.workerlog), from the first whole line in them."""
    data, size = b"", 0
    for path in reversed(paths):
        try:
            with open(path, "rb") as handle:
                end = handle.seek(0, 2)
                want = limit - len(data)
                if want > 0:
                    handle.seek(max(0, end - want))
                    data = handle.read(want) + data
                size += end
        except OSError:
            continue
    head = ""
    if size > len(data):
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            data = data[cut + 1:]
        head = f"[... the first {size - len(data)} bytes are left out ...]\n"
    text = head + data.decode("utf-8", "replace")
    return text if not text or text.endswith("\n") else text + "\n"
