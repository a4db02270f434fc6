"""A crash of the process holding the jobs (kill -9) at any point loses nothing: after a
restart on the same state dir every job finishes with each item exactly once in its
output, and mini-batches finished before the crash are not scored again."""

from __future__ import annotations

import collections
import random
import signal
import time

import pytest

from serving.batch.standalone import StandaloneProcess
from tests.support.gateway import alive, descendants, wait_for
from tests.unit.batch.batch_support import BatchApi, scored_lines, write_batch_endpoint, write_files

ITEMS, MINI_BATCH, PARALLEL = 60, 5, 2


@pytest.fixture
def make(tmp_path):
    """make(delay) → (process not started yet, endpoint folder, input file names)."""
    made: list[StandaloneProcess] = []

    def make(delay: float = 0.1):
        settings = {"mini_batch_size": MINI_BATCH, "instance_count": PARALLEL}
        root = write_batch_endpoint(tmp_path / "eps", settings=settings, env={"DELAY": str(delay)})
        names = write_files(tmp_path / "data" / "in", ITEMS)
        made.append(StandaloneProcess(tmp_path / "state", [tmp_path / "data"], [root]))
        return made[-1], root, names

    yield make
    for process in made:
        process.kill()


def assert_exactly_once(api: BatchApi, job_id: str, names: list[str]) -> None:
    job = api.wait(job_id, 30)
    assert job["status"] == "Completed", job
    assert job["items"] == {"total": ITEMS, "succeeded": ITEMS, "failed": 0, "pending": 0}
    rows = api.rows(job_id)
    assert [r[0] for r in rows] == names, "every item exactly once, in input order"
    assert all(value == f"scored:item-{i:05d}" for i, (_, value) in enumerate(rows))


def rescored(root) -> int:
    """Items run() saw more than once (each crash may cost the mini-batches in flight)."""
    counts = collections.Counter(scored_lines(root))
    return sum(n - 1 for n in counts.values())


@pytest.mark.parametrize("failpoint, submit_answered", [
    ("after_accept:1", False),        # committed, but the 202 never left
    ("after_commit:3", True),         # mid-job, right after a mini-batch committed
    ("after_commit:12", True),        # the last mini-batch committed, output not written yet
    ("output_before_rename:1", True),  # output written to the temp file, not renamed
    ("finish_before_mark:1", True),   # output in place, job not yet marked Completed
])
def test_kill_at_a_crash_point_then_restart(make, failpoint, submit_answered):
    process, root, names = make()
    process.start(env={"SCOREGATE_BATCH_FAILPOINT": failpoint})
    api = BatchApi(process)
    try:
        status = process.request("POST", api.base, {"input": {"type": "uri_folder", "path": "in"}}, api.headers)[0]
    except OSError:
        status = None  # the connection died with the process
    assert status == (202 if submit_answered else None)
    assert process.exit_code(30) == -signal.SIGKILL, process.log()

    process.start()
    api = BatchApi(process)
    jobs = api.list()
    assert len(jobs) == 1, "the accepted job survived the crash"
    assert_exactly_once(api, jobs[0]["id"], names)
    assert rescored(root) <= PARALLEL * MINI_BATCH


def test_repeated_random_kills(make):
    process, root, names = make()
    process.start()
    job_id = BatchApi(process).submit({"input": {"type": "uri_folder", "path": "in"}})["id"]
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        time.sleep(rng.uniform(0.1, 0.3))
        workers = descendants(process.process.pid)
        process.kill()
        kills += 1
        wait_for(lambda: not any(alive(pid) for pid in workers), 5, "workers to die with the service")
        process.start()
    assert_exactly_once(BatchApi(process), job_id, names)
    assert rescored(root) <= kills * PARALLEL * MINI_BATCH


def test_a_graceful_stop_rescores_nothing(make):
    process, root, names = make(delay=0.4)
    process.start()
    api = BatchApi(process)
    job_id = api.submit({"input": {"type": "uri_folder", "path": "in"}})["id"]
    api.wait(job_id, until=lambda j: j["mini_batches"]["succeeded"] >= 1)
    assert process.stop() == 0
    assert len(scored_lines(root)) < ITEMS, "stopped mid-job"
    process.start()
    api = BatchApi(process)
    assert api.show(job_id)["status"] in ("Running", "Completed")
    assert_exactly_once(api, job_id, names)
    assert rescored(root) == 0  # in-flight mini-batches were let finish and commit at the stop
