"""A `serve --workers` gateway killed with -9 leaves its runtime dir (the batch socket's)
in TMPDIR; the next pool removes such dirs of processes that are gone, and no other."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from serving.workers.pool import RUNTIME_PREFIX, _remove_stale_runtime_dirs


def test_the_dirs_of_pools_whose_process_is_gone_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)  # that process has exited
    stale = tmp_path / f"{RUNTIME_PREFIX}{dead_pid}-abc123"
    (stale / "sub").mkdir(parents=True)
    (stale / "batch.sock").write_text("")
    live = tmp_path / f"{RUNTIME_PREFIX}{os.getpid()}-def456"  # a running pool's
    live.mkdir()
    other = tmp_path / "scoregate-something-else"
    other.mkdir()
    _remove_stale_runtime_dirs()
    assert not stale.exists() and live.exists() and other.exists()
