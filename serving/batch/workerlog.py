"""A batch worker's log: its stdout and stderr, through a pipe, onto disk with a cap.

The worker's fds 1 and 2 (and so its child processes') are the write end of a pipe. The
gateway's event loop reads the other end as it comes — reading never waits for the disk,
so a worker blocks on a full pipe only if the whole event loop stalls — into a buffer of
at most BUFFER_BYTES, which a writer thread (two for all worker logs) moves to
`logs/worker-N.log`. Bounded on both sides:

- on disk: worker-N.log grows to LIMIT_BYTES // 2, is then moved to worker-N.log.1
  (replacing the older one) and started again, so the two never hold more than
  LIMIT_BYTES; `scoregate job logs` shows the newest part, across both files;
- in memory: output that arrives while BUFFER_BYTES already wait for the disk is dropped
  and counted; the log then gets one line saying how many bytes were dropped, and the
  gateway log a warning when the worker ends.

A log that cannot be written (disk full, the job's folder taken) never fails the job:
its output is dropped, counted and logged likewise.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("scoregate.batch")
LIMIT_BYTES = 10 << 20  # on disk per worker log: worker-N.log and worker-N.log.1 together
BUFFER_BYTES = 1 << 20  # per worker: output read from its pipe, not yet on disk
DRAIN_TIMEOUT_S = 1.0  # after the worker ended, for a process it left behind to close the pipe
_writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="batch-worker-logs")


class WorkerLog(asyncio.Protocol):
    """One worker's log: open() gives the pipe's write end for the child, close() drains."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self._part = Path(path), max(1, limit // 2)
        self._chunks: list[bytes] = []
        self._buffered = 0  # read, not yet written (in _chunks or being written)
        self.dropped = 0  # bytes never written: buffer full, or the file not writable
        self._unsaid = 0  # dropped since the last line saying so
        self._handle = None
        self._size = 0
        self._write_error: str | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._flushing: asyncio.Task | None = None
        self._ended = asyncio.Event()  # the pipe is closed (EOF, or close())

    async def open(self) -> int:
        """Open the file (no exception if it cannot be) and the pipe; the write end's fd."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(_writer, self._open_file)
        read_fd, write_fd = os.pipe()
        try:
            self._transport, _ = await loop.connect_read_pipe(lambda: self, os.fdopen(read_fd, "rb", buffering=0))
        except BaseException:
            os.close(write_fd)
            raise
        return write_fd

    async def close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait (bounded) for the pipe's end, write what is buffered, close the file; repeatable."""
        if self._transport is not None and not self._ended.is_set():
            try:
                await asyncio.wait_for(self._ended.wait(), timeout_s)
            except TimeoutError:  # a process the worker left behind holds the pipe: stop reading it
                self._transport.close()
                self._ended.set()
        self._kick()
        if self._flushing is not None:
            await asyncio.shield(self._flushing)

    # -- the pipe (event loop) ------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._buffered + len(data) > BUFFER_BYTES:
            self._drop(len(data))
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._kick()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended.set()
        self._kick()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._unsaid += count

    def _kick(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._chunks or self._unsaid:
            data, self._chunks = b"".join(self._chunks), []
            if self._unsaid:
                data += (f"\n[scoregate: {self._unsaid} bytes of the worker's output were dropped: they came"
                         " faster than the log could be written]\n").encode()
                self._unsaid = 0
            try:
                await loop.run_in_executor(_writer, self._write, data)
            finally:
                self._buffered = max(0, self._buffered - len(data))
        if self._ended.is_set() and self._handle is not None:
            await loop.run_in_executor(_writer, self._close_file)

    # -- the file (writer thread) ---------------------------------------------------------
    def _open_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab", buffering=0)
            self._size = self._handle.seek(0, os.SEEK_END)
        except OSError as exc:
            self._failed(exc)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view and self._handle is not None:
                if self._size >= self._part:
                    self._rotate()
                    continue
                written = self._handle.write(view[:self._part - self._size]) or 0
                self._size += written
                view = view[written:]
        except OSError as exc:
            self._failed(exc)
        if view:
            self.dropped += len(view)  # (not said in the file: it cannot be written)

    def _rotate(self) -> None:
        self._handle.close()
        self._handle = None
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._handle = open(self.path, "ab", buffering=0)
        self._size = 0

    def _failed(self, exc: OSError) -> None:
        if self._write_error is None:
            self._write_error = exc.strerror or type(exc).__name__
            log.warning("batch worker log %s cannot be written (its output is dropped): %s", self.path, exc)
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _close_file(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.dropped:
            log.warning("batch worker log %s: %d bytes of the worker's output were dropped", self.path, self.dropped)
