"""The model server as the gateway sees it: a real child process over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IRIS = ROOT / "examples" / "iris"
SAMPLE = (IRIS / "sample-request.json").read_text()
READY_PREFIX = "scoregate-modelserver listening on "
START_TIMEOUT = 10.0

ECHO_SCRIPT = '''
import sys
import time
from aiohttp import web

def init():
    pass

def run(raw_data):
    if raw_data == "bytes":
        return b"\\x00\\x01raw"
    if raw_data == "response":
        return web.Response(status=201, text="custom", headers={"x-custom": "yes"})
    if raw_data.startswith("sleep:"):
        print("run() sleeping", raw_data[6:], file=sys.stderr, flush=True)
        time.sleep(float(raw_data[6:]))
        return {"slept": float(raw_data[6:])}
    return {"echo": raw_data}
'''


def server_command(code: Path, script: str = "score.py", model_dir: Path | None = None,
                   extra: tuple[str, ...] = ()) -> list[str]:
    command = [sys.executable, "-m", "serving.modelserver", "--code", str(code),
               "--scoring-script", script, "--port", "0", *extra]
    if model_dir is not None:
        command += ["--model-dir", str(model_dir)]
    return command


def read_line(stream, deadline: float) -> str:
    """One stdout line, or fail once the deadline passes (never hang the suite)."""
    remaining = deadline - time.monotonic()
    ready, _, _ = select.select([stream], [], [], max(0.0, remaining))
    assert ready, "timed out waiting for output from the model server"
    return stream.readline().decode()


def read_port(stream, deadline: float) -> int:
    while True:
        line = read_line(stream, deadline)
        assert line, "model server exited before it was ready"
        if line.startswith(READY_PREFIX):
            return int(line.strip().rsplit(":", 1)[1])


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (it is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in {"Z", "X"}


class Server:
    """A running model server child process and its base URL."""

    def __init__(self, command: list[str], stderr_path: Path, env: dict[str, str] | None = None):
        self.stderr_path = stderr_path
        self.stderr_file = stderr_path.open("wb")
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr_file, env=env)
        try:
            self.port = read_port(self.proc.stdout, time.monotonic() + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        kill(self.proc)
        self.proc.stdout.close()
        self.stderr_file.close()

    async def wait_for_stderr(self, text: str, timeout_s: float = 10.0) -> None:
        """Until `text` is in its stderr (bounded)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{text!r} not in the model server's stderr within {timeout_s} s"
            await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def blue(tmp_path_factory):
    server = Server(server_command(IRIS / "blue", model_dir=IRIS / "blue" / "model"),
                    tmp_path_factory.mktemp("blue") / "stderr.log")
    yield server
    server.stop()


@pytest.fixture
def echo_code(tmp_path: Path) -> Path:
    code = tmp_path / "echo"
    code.mkdir()
    (code / "echo_score.py").write_text(ECHO_SCRIPT)
    (code / "swagger.json").write_text('{"swagger": "2.0", "info": {"title": "echo, hand written"}}')
    return code


@pytest.fixture
def echo(echo_code: Path, tmp_path: Path):
    server = Server(server_command(echo_code, "echo_score.py"), tmp_path / "echo-stderr.log")
    yield server
    server.stop()


async def test_health_routes(blue, http):
    for path in ("/", "/ready"):
        async with http.get(blue.url + path) as response:
            assert response.status == 200
            assert await response.text() == "Healthy"


async def test_score_sample_request(blue, http):
    async with http.post(blue.url + "/score", data=SAMPLE, headers={"x-request-id": "req-42"}) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert response.headers["x-request-id"] == "req-42"
        body = await response.json()
    assert body["predictions"] == ["setosa", "versicolor", "virginica"]
    assert body["model"] == "logistic-regression"


async def test_run_error_is_a_json_500_with_the_request_id(blue, http):
    async with http.post(blue.url + "/score", data='{"data": [[1, 2]]}',
                         headers={"x-request-id": "req-bad"}) as response:
        assert response.status == 500
        assert response.headers["x-request-id"] == "req-bad"
        body = await response.json()
    assert body["code"] == "ScoringScriptError"
    assert body["message"].startswith("ValueError: ")
    assert body["request_id"] == "req-bad"
    assert "Traceback" in Path(blue.stderr_file.name).read_text()


async def test_non_utf8_body_is_a_400(blue, http):
    async with http.post(blue.url + "/score", data=b"\xff\xfe\x00bad", headers={"x-request-id": "r8"}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["request_id"] == "r8" and "UTF-8" in body["message"]


async def test_generated_swagger(blue, http):
    async with http.get(blue.url + "/swagger.json") as response:
        assert response.status == 200
        document = json.loads(await response.text())
    assert document["swagger"] == "2.0"
    assert document["info"]["title"] == "score"
    assert "/score" in document["paths"]


async def test_result_kinds_and_own_swagger(echo, http):
    async with http.post(echo.url + "/score", data="bytes") as response:
        assert response.content_type == "application/octet-stream"
        assert await response.read() == b"\x00\x01raw"
    async with http.post(echo.url + "/score", data="response", headers={"x-request-id": "r1"}) as response:
        assert response.status == 201 and await response.text() == "custom"
        assert response.headers["x-custom"] == "yes" and response.headers["x-request-id"] == "r1"
    async with http.post(echo.url + "/score", data="héllo".encode()) as response:
        assert await response.json() == {"echo": "héllo"}
    async with http.get(echo.url + "/swagger.json") as response:
        assert (await response.json())["info"]["title"] == "echo, hand written"


async def test_run_does_not_block_the_event_loop(echo, http):
    slow = asyncio.create_task(http.post(echo.url + "/score", data="sleep:1.0"))
    await echo.wait_for_stderr("run() sleeping 1.0")
    started = time.monotonic()
    async with http.get(echo.url + "/") as response:
        assert response.status == 200
    assert time.monotonic() - started < 0.5
    response = await slow
    assert (await response.json()) == {"slept": 1.0}
    response.release()


async def test_sigterm_finishes_in_flight_request_then_exits_zero(echo, http):
    in_flight = asyncio.create_task(http.post(echo.url + "/score", data="sleep:0.8"))
    await echo.wait_for_stderr("run() sleeping 0.8")
    stopped_at = time.monotonic()
    echo.proc.send_signal(signal.SIGTERM)
    response = await in_flight
    assert response.status == 200 and (await response.json()) == {"slept": 0.8}
    assert await asyncio.to_thread(echo.proc.wait, 5) == 0
    assert time.monotonic() - stopped_at < 3


def test_sigterm_when_idle_exits_zero_promptly(echo):
    started = time.monotonic()
    echo.proc.send_signal(signal.SIGTERM)
    assert echo.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2


def test_init_failure_exits_3_with_traceback(tmp_path: Path):
    (tmp_path / "broken.py").write_text(textwrap.dedent('''
        def init():
            raise RuntimeError("model file is corrupt")

        def run(raw_data):
            return raw_data
    '''))
    proc = subprocess.Popen(server_command(tmp_path, "broken.py"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT)
    finally:
        kill(proc)
    assert proc.returncode == 3
    assert READY_PREFIX not in out.decode()
    assert "Traceback" in err.decode() and "RuntimeError: model file is corrupt" in err.decode()


def test_exits_when_its_parent_is_killed(tmp_path: Path):
    # An intermediate parent starts the model server (sharing its stdout) and waits.
    parent_code = textwrap.dedent(f'''
        import subprocess, sys
        child = subprocess.Popen({server_command(IRIS / "green", model_dir=IRIS / "green" / "model")!r},
                                 cwd={str(ROOT)!r}, stderr=subprocess.DEVNULL)
        print("child", child.pid, flush=True)
        child.wait()
    ''')
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    child_pid = None
    try:
        deadline = time.monotonic() + START_TIMEOUT
        first = read_line(parent.stdout, deadline)
        assert first.startswith("child "), first
        child_pid = int(first.split()[1])
        read_port(parent.stdout, deadline)
        assert pid_alive(child_pid)
        parent.kill()
        parent.wait(timeout=5)
        deadline = time.monotonic() + 5
        while pid_alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child_pid), "model server outlived its parent"
    finally:
        kill(parent)
        parent.stdout.close()
        if child_pid is not None and pid_alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


BARRIER_SCRIPT = '''
import threading

both = threading.Barrier(2, timeout=5)

def init():
    pass

def run(raw_data):
    both.wait()  # returns only when a second run() is in progress at the same time
    return {"together": True}
'''


async def test_worker_count_runs_that_many_requests_at_once(tmp_path: Path, http):
    """Azure ML's WORKER_COUNT (an environment variable of the deployment) is how a model
    serves max_concurrent_requests_per_instance > 1; before, run() went one at a time and
    the second request waited inside the replica, past the gateway's queue."""
    (tmp_path / "score.py").write_text(BARRIER_SCRIPT)
    command = server_command(tmp_path)
    stderr = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                            env={**os.environ, "WORKER_COUNT": "2"})
    try:
        url = f"http://127.0.0.1:{read_port(proc.stdout, time.monotonic() + START_TIMEOUT)}/score"
        answers = await asyncio.gather(*(http.post(url, data="{}") for _ in range(2)))
        assert [(a.status, await a.json()) for a in answers] == [(200, {"together": True})] * 2
    finally:
        kill(proc)
        proc.stdout.close()
        stderr.close()


def test_a_worker_count_that_is_not_a_positive_number_is_named(tmp_path: Path):
    (tmp_path / "score.py").write_text(BARRIER_SCRIPT)
    done = subprocess.run(server_command(tmp_path), cwd=ROOT, capture_output=True, timeout=30,
                          env={**os.environ, "WORKER_COUNT": "many"})
    assert done.returncode == 2 and b"WORKER_COUNT" in done.stderr
