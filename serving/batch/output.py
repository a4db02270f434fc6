"""Write a job's output file so that no reader ever sees a torn or partial row.

Results live in the database, committed per mini-batch (see serving.batch.jobs). The
file is assembled from them into a temporary file in the same folder, fsync'ed and
renamed over the final name (then the folder is fsync'ed): a reader sees no file or the
whole file. Writing it again after a crash gives the same bytes, so finishing a job is
idempotent.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from . import failpoints
from .jobs import JobStore


class _Lines:
    """A file-like sink for csv.writer that writes bytes in large blocks."""

    def __init__(self, handle) -> None:
        self._handle, self._parts, self._size = handle, [], 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 1 << 20:
            self.flush()

    def flush(self) -> None:
        self._handle.write("".join(self._parts).encode("utf-8", "replace"))
        self._parts, self._size = [], 0


def write_output(jobs: JobStore, job_id: str, path: Path) -> int:
    """Write `path` from the job's committed results (append_row); the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    rows = 0
    try:
        with open(tmp, "wb") as handle:
            sink = _Lines(handle)
            writer = csv.writer(sink, lineterminator="\n")
            for ref, value in jobs.output_rows(job_id):
                writer.writerow((ref, value))
                rows += 1
            sink.flush()
            handle.flush()
            os.fsync(handle.fileno())
        failpoints.hit("output_before_rename")
        os.replace(tmp, path)
    except OSError:  # disk full, a path taken: leave no half-written temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return rows


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
