"""A batch worker's log (serving.batch.workerlog): capped on disk, never blocking the worker."""

from __future__ import annotations

import asyncio
import os
import threading

from serving.batch import workerlog
from serving.batch.workerlog import WorkerLog


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def test_rotated_once_the_two_parts_within_the_limit(tmp_path):
    path = tmp_path / "logs" / "worker-0.log"
    log = WorkerLog(path, 10_000)
    fd = await log.open()
    lines = b"".join(b"line %05d\n" % i for i in range(5000))  # 55,000 bytes
    await asyncio.to_thread(_write_all, fd, lines)
    os.close(fd)
    await log.close()
    older, newer = path.with_name("worker-0.log.1").read_bytes(), path.read_bytes()
    assert len(older) == 5000 and len(newer) <= 5000 and lines.endswith(older + newer)
    assert log.dropped == 0


async def test_a_slow_disk_drops_and_counts_instead_of_blocking_the_writer(tmp_path):
    path = tmp_path / "worker-1.log"
    log = WorkerLog(path, 100 << 20)
    fd = await log.open()
    stuck = threading.Event()
    blockers = [workerlog._writer.submit(stuck.wait) for _ in range(2)]  # both writer threads busy
    try:
        data = b"y" * 99 + b"\n"
        # 4 MiB more than the pipe (64 KiB) and the buffer (1 MiB) hold: this returns only
        # because what the log cannot take is dropped
        await asyncio.wait_for(asyncio.to_thread(_write_all, fd, data * 40_000), 10)
    finally:
        stuck.set()
    os.close(fd)
    await log.close()
    for blocker in blockers:
        blocker.result()
    text = path.read_bytes()
    assert log.dropped > 0 and len(text) <= workerlog.BUFFER_BYTES + 200
    assert f"[scoregate: {log.dropped} bytes of the worker's output were dropped".encode() in text
    note = text[text.index(b"\n[scoregate"):]
    assert log.dropped + len(text) - len(note) == 4_000_000  # every byte written or counted


async def test_a_log_that_cannot_be_written_drops_its_output(tmp_path, caplog):
    (tmp_path / "logs").write_text("")  # the log's folder is taken by a file
    log = WorkerLog(tmp_path / "logs" / "worker-0.log", 1 << 20)
    fd = await log.open()
    await asyncio.to_thread(_write_all, fd, b"lost\n" * 10)
    os.close(fd)
    await log.close()
    assert log.dropped == 50 and "cannot be written" in caplog.text


async def test_close_is_bounded_when_a_left_behind_process_holds_the_pipe(tmp_path):
    log = WorkerLog(tmp_path / "worker-0.log", 1 << 20)
    fd = await log.open()
    kept = os.dup(fd)  # like a grandchild that escaped the worker's process group
    os.close(fd)
    try:
        await asyncio.wait_for(log.close(timeout_s=0.2), 5)
    finally:
        os.close(kept)
