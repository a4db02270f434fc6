"""Shared helpers of the batch tests (unit and functional): scripts, YAML, data, polling.

Not a test module. The functional tests run serving.batch.standalone in a child process
(so it can be killed with -9 and started again on the same state dir); the gateway-level
test (tests/e2e/test_batch_e2e.py) uses tests/support/gateway.py instead.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from serving.batch.standalone import StandaloneProcess

TERMINAL = ("Completed", "Failed", "Canceled")

# A scoring script whose behaviour each item chooses: its text (file content or JSON row)
# may contain FAIL (raise), FLAKY (raise on the first try only), CRASH (the worker dies),
# HANG (run() never returns). Every run() call is appended to $SCORED_LOG, one line per
# item, so tests can tell what was scored and how often.
SCRIPT = r'''
import json, os, time

def init():
    if os.environ.get("INIT_FAIL"):
        raise RuntimeError("init refuses: INIT_FAIL is set")

def _text(item):
    if isinstance(item, str):
        with open(item, encoding="utf-8") as f:
            return f.read().strip()
    return json.dumps(item, sort_keys=True)

def run(mini_batch):
    texts = [_text(item) for item in mini_batch]
    print("scoring", len(texts), "items")  # must not disturb the worker protocol
    for text in texts:
        if "FLAKY" in text:
            marker = os.path.join(os.environ["MARKERS"], text.replace("/", "_"))
            if not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError("flaky item, first try: " + text)
        if "FAIL" in text and "FLAKY" not in text:
            raise ValueError("cannot score " + text)
        if "CRASH" in text:
            os._exit(9)
        if "HANG" in text:
            time.sleep(3600)
    time.sleep(float(os.environ.get("DELAY", "0")))
    with open(os.environ["SCORED_LOG"], "a", encoding="utf-8") as log:
        log.write("".join(t.replace("\n", " ") + "\n" for t in texts))
    return ["scored:" + t for t in texts]
'''


def write_batch_endpoint(folder: Path, name: str = "scorer", *, settings: dict | None = None,
                         env: dict | None = None, auth_mode: str = "key", script: str = SCRIPT) -> Path:
    """A batch endpoint + deployment ("main") of SCRIPT under folder/name/; returns the folder."""
    root = Path(folder) / name
    (root / "code").mkdir(parents=True, exist_ok=True)
    (root / "markers").mkdir(exist_ok=True)
    (root / "code" / "score.py").write_text(script)
    endpoint = {"kind": "batch", "name": name, "auth_mode": auth_mode, "defaults": {"deployment_name": "main"}}
    deployment = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/batchDeployment.schema.json",
        "name": "main", "endpoint_name": name,
        "code_configuration": {"code": "./code", "scoring_script": "score.py"},
        "environment_variables": {"SCORED_LOG": str(root / "scored.log"), "MARKERS": str(root / "markers"),
                                  **(env or {})},
        "settings": {"mini_batch_size": 10, "retry_settings": {"max_retries": 1, "timeout": 10}, **(settings or {})},
    }
    (root / "endpoint.yml").write_text(yaml.safe_dump(endpoint, sort_keys=False))
    (root / "deployment.yml").write_text(yaml.safe_dump(deployment, sort_keys=False))
    return root


def scored_lines(root: Path) -> list[str]:
    path = root / "scored.log"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def write_files(folder: Path, count: int, text=lambda i: f"item-{i:05d}") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):  # os-level writes: ten times faster than Path.write_text here
        name = f"f{i:05d}.txt"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text(i).encode())
        finally:
            os.close(fd)
        names.append(name)
    return names


@contextlib.contextmanager
def scratch_folder(fallback: Path):
    """A folder on tmpfs when there is one: creating 10,000 files on a busy disk takes
    seconds, and what is tested is the batch path, not the disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="scoregate-batch-", dir=shm))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        fallback.mkdir(parents=True, exist_ok=True)
        yield fallback


class BatchApi:
    """Job calls against a StandaloneProcess, with the endpoint's key."""

    def __init__(self, process: StandaloneProcess, endpoint: str = "scorer") -> None:
        self.process, self.endpoint = process, endpoint
        self.headers = {"Authorization": f"Bearer {process.key(endpoint)}", "Content-Type": "application/json"}

    @property
    def base(self) -> str:
        return f"/api/v1/batch/{self.endpoint}/jobs"

    def submit(self, body: dict | bytes, expect: int = 202) -> dict:
        status, _, raw = self.process.request("POST", self.base, body, self.headers)
        assert status == expect, (status, raw)
        return json.loads(raw)

    def show(self, job_id: str) -> dict:
        status, _, raw = self.process.request("GET", f"{self.base}/{job_id}", None, self.headers)
        assert status == 200, (status, raw)
        return json.loads(raw)

    def list(self) -> list:
        status, _, raw = self.process.request("GET", self.base, None, self.headers)
        assert status == 200, (status, raw)
        return json.loads(raw)

    def cancel(self, job_id: str) -> tuple[int, dict]:
        status, _, raw = self.process.request("POST", f"{self.base}/{job_id}/cancel", b"", self.headers)
        return status, json.loads(raw)

    def output(self, job_id: str) -> tuple[int, bytes]:
        status, _, raw = self.process.request("GET", f"{self.base}/{job_id}/output", None, self.headers)
        return status, raw

    def rows(self, job_id: str) -> list[list[str]]:
        status, raw = self.output(job_id)
        assert status == 200, (status, raw)
        return list(csv.reader(io.StringIO(raw.decode("utf-8"))))

    def wait(self, job_id: str, timeout_s: float = 30.0, until=lambda job: job["status"] in TERMINAL) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.show(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout_s}s: {job}")
            time.sleep(0.05)
