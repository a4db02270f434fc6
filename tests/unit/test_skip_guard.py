"""CI's skip guard (tests/conftest.py): with SCOREGATE_NO_SKIPS=1 a skipped test fails the
run, except a skip the interpreter causes; without it a skip is only reported."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.gateway import REPO

TESTS = '''
import pytest

def test_runs():
    pass

def test_tool_missing():
    pytest.skip("no such tool here")

def test_interpreter_lacks_it():
    pytest.skip("this Python has no tarfile data filter; the other case covers it")
'''


def run(tmp_path, selection: str, guard: bool, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "SCOREGATE_NO_SKIPS"}
    if guard:
        env["SCOREGATE_NO_SKIPS"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-c", os.devnull, "-k", selection, *options, str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def test_a_skip_fails_the_run_under_the_guard(tmp_path):
    done = run(tmp_path, "runs or tool_missing", guard=True)
    assert done.returncode == 1, done.stdout
    assert "test_sample.py::test_tool_missing: Skipped: no such tool here" in done.stdout


def test_a_skip_on_a_worker_process_fails_the_run_too(tmp_path):
    """The suite runs on two processes (pyproject's addopts: pytest-xdist); their skips
    reach the main process, which fails the run."""
    done = run(tmp_path, "runs or tool_missing", True, "-n", "2")
    assert done.returncode == 1, done.stdout
    assert "test_sample.py::test_tool_missing: Skipped: no such tool here" in done.stdout


def test_without_the_guard_a_skip_is_only_reported(tmp_path):
    done = run(tmp_path, "runs or tool_missing", guard=False)
    assert done.returncode == 0, done.stdout


def test_a_skip_the_interpreter_causes_is_allowed(tmp_path):
    done = run(tmp_path, "runs or interpreter_lacks_it", guard=True)
    assert done.returncode == 0, done.stdout
