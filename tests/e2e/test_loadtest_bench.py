"""`python -m loadtests bench --quick`: the whole benchmark, end to end, in seconds.

It starts a real `scoregate serve`, the fast server and (when installed) nginx,
measures each briefly and writes the report.  Quick mode measures nothing worth
reading, so this checks that every section is produced and everything stopped,
never the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.support.gateway import REPO

SECTIONS = ("# scoregate benchmark", "## Maximum throughput (closed loop)",
            "## Fixed rates (open loop)", "### 100 req/s", "### 200 req/s",
            "### 50% of scoregate's max (", "## scoregate / nginx")


def bench_processes() -> set[int]:
    """Processes whose command line mentions a benchmark work dir."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"scoregate-bench-" in handle.read():
                    found.add(int(pid))
        except OSError:
            pass
    return found


def test_quick_bench_writes_every_section(tmp_path):
    before = bench_processes()
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "loadtests", "bench", "--quick", "--no-wrk",
                           "--no-plots", "--output", str(out)],
                          capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert summary == done.stdout
    for section in SECTIONS:
        assert section in summary, section
    assert "[bench] round 1/1 closed loop scoregate" in done.stderr

    data = json.loads((out / "results.json").read_text())
    names = ["direct", "scoregate"]  # the default replica is the fast server: it is "direct"
    assert data["setup"]["replica"] == "fastserver"
    if shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK):
        names.append("nginx")
        assert data["ratios"]["max_throughput"] is not None
    else:
        assert "--install-nginx" in data["skipped"]["nginx"]
        assert "nginx skipped" in summary
    assert data["targets"] == names
    assert set(data["closed"]) == set(names)
    assert [r["rate"] for r in data["rates"]][:2] == [100, 200] and len(data["rates"]) == 3
    for entry in data["rates"]:
        assert set(entry["targets"]) == set(names)
        assert entry["targets"]["scoregate"]["overhead_p50_ms"] is not None
    assert {"nproc", "cpu_model", "kernel"} <= set(data["machine"])
    assert data["setup"]["pinning"]
    assert bench_processes() <= before  # the gateway, its replica, nginx: all stopped
