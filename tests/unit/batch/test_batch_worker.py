"""Batch worker processes: init once, run(mini_batch), and what happens when they misbehave."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from serving.batch.workers import MiniBatchFailed, Worker, WorkerInitFailed, WorkerLost, WorkerSpec

SCRIPT = r'''
import os, sys, time
calls = 0

def init():
    global calls
    if os.environ.get("INIT_FAIL"):
        raise RuntimeError("no model here")
    print("init printed on stdout")  # must land in the log, not in the protocol

def run(mini_batch):
    global calls
    calls += 1
    print("run printed", mini_batch)
    first = mini_batch[0]
    if first == "raise":
        raise ValueError("bad input")
    if first == "short":
        return mini_batch[:-1]
    if first == "dict":
        return {"a": 1}
    if first == "hang":
        time.sleep(60)
    if first == "exit":
        os._exit(7)
    if first == "pid":
        return [os.getpid()]
    return [item if isinstance(item, str) else {"row": item, "calls": calls} for item in mini_batch]
'''


@pytest.fixture
def spec(tmp_path) -> WorkerSpec:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCRIPT)
    return WorkerSpec(str(tmp_path / "code"), "score.py")


async def started(spec, tmp_path, **env) -> Worker:
    worker = Worker(WorkerSpec(spec.code, spec.scoring_script, environment_variables=env), tmp_path / "w.log")
    await worker.start(timeout_s=20)
    return worker


async def test_init_once_then_many_mini_batches(spec, tmp_path):
    worker = await started(spec, tmp_path)
    try:
        assert await worker.score(1, "files", ["a", "b"], 10) == ["a", "b"]
        rows = await worker.score(2, "rows", [json.dumps([1, 2]), json.dumps({"x": None})], 10)
        assert [json.loads(r) for r in rows] == [{"row": [1, 2], "calls": 2}, {"row": {"x": None}, "calls": 2}]
    finally:
        await worker.close()
    log = (tmp_path / "w.log").read_text()
    assert "init printed on stdout" in log and "run printed" in log


async def test_a_raising_or_wrong_run_fails_the_mini_batch_but_keeps_the_worker(spec, tmp_path):
    worker = await started(spec, tmp_path)
    try:
        with pytest.raises(MiniBatchFailed, match="ValueError: bad input"):
            await worker.score(1, "files", ["raise"], 10)
        with pytest.raises(MiniBatchFailed, match="returned 1 results for 2 items"):
            await worker.score(2, "files", ["short", "x"], 10)
        with pytest.raises(MiniBatchFailed, match="must return a list"):
            await worker.score(3, "files", ["dict"], 10)
        pid = worker.pid
        assert await worker.score(4, "files", ["pid"], 10) == [str(pid)]
    finally:
        await worker.close()


async def test_a_timeout_kills_the_worker(spec, tmp_path):
    worker = await started(spec, tmp_path)
    pid = worker.pid
    with pytest.raises(WorkerLost, match="did not finish within the timeout of 0.3 s"):
        await worker.score(1, "files", ["hang"], 0.3)
    await asyncio.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_dying_worker_is_reported(spec, tmp_path):
    worker = await started(spec, tmp_path)
    with pytest.raises(WorkerLost, match="exited with code 7"):
        await worker.score(1, "files", ["exit"], 10)


async def test_init_failure(spec, tmp_path):
    with pytest.raises(WorkerInitFailed, match="init\\(\\) failed: RuntimeError: no model here"):
        await started(spec, tmp_path, INIT_FAIL="1")
    assert "Traceback" in (tmp_path / "w.log").read_text()


async def test_a_missing_script_is_an_init_failure(tmp_path):
    worker = Worker(WorkerSpec(str(tmp_path), "nope.py"), tmp_path / "w.log")
    with pytest.raises(WorkerInitFailed, match="not found"):
        await worker.start(timeout_s=20)


async def test_a_code_folder_gone_since_apply_is_named(tmp_path):
    gone = tmp_path / "code-removed"
    worker = Worker(WorkerSpec(str(gone), "score.py"), tmp_path / "w.log")
    with pytest.raises(WorkerInitFailed) as info:
        await worker.start(timeout_s=20)
    assert str(info.value) == f"cannot start a worker process in the code folder {gone}: No such file or directory"


NUMPY_SCRIPT = r'''
import numpy

def init():
    pass

def run(mini_batch):
    if mini_batch[0] == "classes":
        return numpy.array([3, 0], dtype=numpy.int64)  # what model.predict returns
    return [numpy.array([0.25, 0.75]), numpy.bool_(True)]  # a row of predict_proba, a numpy flag
'''


async def test_numpy_results_are_written_as_numbers_and_lists(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(NUMPY_SCRIPT)
    worker = Worker(WorkerSpec(str(tmp_path / "code"), "score.py"), tmp_path / "w.log")
    await worker.start(timeout_s=20)
    try:
        assert await worker.score(1, "files", ["classes", "x"], 10) == ["3", "0"]
        assert await worker.score(2, "files", ["proba", "x"], 10) == ["[0.25, 0.75]", "true"]
    finally:
        await worker.close()
