"""Why a local replica stopped, as the status page, `deployment show` and the gateway's
log say it: exit code 3 is the model server's "score.py or init() failed", but only
while the replica is starting; a replica that was ready and then exited with 3 (the
scoring script's own os._exit(3)) stopped while running, not in init."""

from __future__ import annotations

import asyncio
import urllib.request

from serving.backends import EXITED, READY
from serving.backends.local import LocalProcessBackend
from serving.resources import Deployment
from tests.support.waiting import until

SCORE = '''
import os

def init():
    pass

def run(raw_data):
    if "exit" in raw_data:
        os._exit(3)
    return {"ok": True}
'''


async def test_a_ready_replica_that_exits_with_3_stopped_running_not_in_init(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(SCORE)
    backend = LocalProcessBackend(tmp_path / "state")
    await backend.start()
    try:
        deployment = Deployment(name="main", endpoint_name="ep", code=str(code), scoring_script="score.py")
        replica_id = await backend.start_replica(deployment, deployment.replica_spec_hash())
        view = lambda: next(v for v in backend.observe() if v.replica_id == replica_id)  # noqa: E731
        ready = await until(lambda: view().state == READY and view(), 30, "the replica to be ready")
        request = urllib.request.Request(f"http://127.0.0.1:{ready.port}/score", data=b'"exit"')
        try:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
        except OSError:
            pass  # the process is gone before it answers
        exited = await until(lambda: view().state == EXITED and view(), 30, "the replica to exit")
        assert exited.failed_stage == "running"
        assert exited.reason == "the replica process exited with code 3"
    finally:
        await backend.close()
