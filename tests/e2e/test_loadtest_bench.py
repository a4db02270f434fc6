"""`python -m loadtests bench --quick`: the whole benchmark, end to end, in seconds.

It starts a real `scoregate serve`, the fast server and (when installed) nginx,
measures each briefly and writes the report.  Quick mode measures nothing worth
reading, so this checks that every section is produced and everything stopped,
never the figures. With --workers 2 a second gateway runs `serve --workers 2`: its
section, the goal's "not measurable here" on a machine without 3 cores, and no
worker left behind; the pinning plan and the goal's verdict are checked without processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.support.gateway import REPO
from tests.support.processes import processes_mentioning

SECTIONS = ("# scoregate benchmark", "## Maximum throughput (closed loop)",
            "## Fixed rates (open loop)", "### 100 req/s", "### 200 req/s",
            "### 50% of scoregate's max (", "## scoregate / nginx")


def bench_processes() -> set[int]:
    """Processes whose command line mentions a benchmark work dir."""
    return processes_mentioning(b"scoregate-bench-")


def test_quick_bench_writes_every_section(tmp_path):
    before = bench_processes()
    out = tmp_path / "bench"
    # A `scoregate` first on PATH that is not this interpreter's: the benchmark must not use it.
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir()
    (decoy / "scoregate").write_text("#!/bin/sh\necho 'the scoregate found on PATH ran' >&2\nexit 3\n")
    (decoy / "scoregate").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{decoy}:{os.environ.get('PATH', '')}"}
    # Half of quick mode's measuring time: only the sections and the processes are checked.
    done = subprocess.run([sys.executable, "-m", "loadtests", "bench", "--quick", "--no-wrk",
                           "--duration", "0.15", "--warmup", "0.05", "--no-plots", "--output", str(out)],
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
        # the proxies' CPU per request at each rate (the replica has none of its own here);
        # quick mode's fraction of a second can be under one clock tick of CPU (0.0)
        for name in set(names) - {"direct"}:
            figure = entry["targets"][name]["cpu_us_per_request"]
            assert figure is not None and figure["median"] >= 0, (entry["label"], name)
        assert entry["targets"]["direct"]["cpu_us_per_request"] is None
    assert {"nproc", "cpu_model", "kernel"} <= set(data["machine"])
    # The gateway ran on the interpreter that measured it (not whichever `scoregate` PATH
    # finds first), and the report says which one that was.
    assert data["setup"]["gateway_python"] == os.path.realpath(sys.executable)
    assert data["machine"]["python_executable"] == sys.executable
    assert f"gateway interpreter: {os.path.realpath(sys.executable)}" in summary
    assert data["setup"]["pinning"]
    assert bench_processes() <= before  # the gateway, its replica, nginx: all stopped


def test_workers_phase_pinning_plan():
    from loadtests.bench.workers import plan_workers

    two = plan_workers([0, 1], 2, 0, 1)  # this kind of machine: 2 workers + a client core do not fit
    assert not two.measurable and two.gateway_cpus == two.client_cpus == (0, 1)
    assert two.reason == ("not measurable here: needs 3 cores (2 for the workers, 1 for the "
                          "generator and replica); this machine has 2")
    assert "indicative" in two.pinning and two.wrk_threads == 1 and not two.pin_each_worker

    three = plan_workers([0, 1, 2], 2, 0, 1)
    assert three.measurable and three.reason == ""
    assert (three.gateway_cpus, three.client_cpus, three.wrk_threads) == ((0, 2), (1,), 1)
    assert three.pin_each_worker

    four = plan_workers([3, 2, 1, 0], 2, 0, 1)  # a spare core goes to the client (wrk -t2)
    assert (four.gateway_cpus, four.client_cpus, four.wrk_threads) == ((0, 2), (1, 3), 2)
    many = plan_workers(range(16), 4, 5, 9)  # the client gets at most N cores
    assert many.gateway_cpus == (5, 0, 1, 2) and many.client_cpus == (9, 3, 4, 6)
    assert not set(many.gateway_cpus) & set(many.client_cpus)

    assert "this machine has 4" in plan_workers(range(4), 4, 0, 1).reason
    unpinned = plan_workers(range(8), 2, None, None)  # --no-pin: never a verdict
    assert not unpinned.measurable and unpinned.gateway_cpus is None and "not pinned" in unpinned.reason


def test_requests_by_worker_from_metrics():
    from loadtests.bench.workers import _shares, requests_by_worker

    text = ('scoregate_requests_total{code="",deployment="fast",endpoint="bench",status="200",worker="0"} 30.0\n'
            'scoregate_requests_total{code="",deployment="fast",endpoint="bench",status="200",worker="1"} 10.0\n'
            'scoregate_requests_total{code="x",deployment="fast",endpoint="bench",status="503",worker="1"} 2.0\n'
            'scoregate_requests_total{code="",deployment="d",endpoint="other",status="200",worker="1"} 99.0\n'
            'scoregate_requests_created{code="",deployment="fast",endpoint="bench",status="200",worker="0"} 1.0\n')
    assert requests_by_worker(text) == {"0": 30.0, "1": 12.0}
    assert _shares({"0": 10.0, "1": 2.0}, {"0": 30.0, "1": 12.0}) == {"0": 0.667, "1": 0.333}
    assert _shares(None, {"0": 1.0}) is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_quick_bench_with_two_workers(tmp_path):
    before = bench_processes()
    out = tmp_path / "bench"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # One fixed rate (quick mode has two): this test reads the workers phase, which has its own.
    done = subprocess.run([sys.executable, "-m", "loadtests", "bench", "--quick", "--workers", "2", "--rates", "100",
                           "--no-nginx", "--idle-connections", "0", "--no-plots", "--output", str(out)],
                          capture_output=True, text=True, timeout=150, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "## Workers (`serve --workers 2`)" in summary and "| 2 workers |" in summary

    data = json.loads((out / "results.json").read_text())
    workers = data["workers"]
    assert workers["workers"] == 2 and "error" not in workers, workers.get("error")
    for key in ("throughput", "cpu_us_per_request"):
        assert isinstance(workers[key]["median"], (int, float)) and workers[key]["median"] > 0, key
    assert isinstance(workers["baseline"]["throughput"]["median"], (int, float))
    assert isinstance(workers["scaling"], float)
    roles = {p["role"]: p for p in workers["processes"]}
    assert {"main", "worker 0", "worker 1", "replica"} <= set(roles)
    assert [r for r, p in roles.items() if p["cpu_measured"]] == ["main", "worker 0", "worker 1"]
    assert workers["worker_share"] and set(workers["worker_share"]) <= {"0", "1"}
    assert data["setup"]["workers_pinning"] == workers["plan"]["pinning"]

    goal = next(g for g in data["goals"] if g["goal"] == "--workers N scales ≥ 0.8 × N")
    cores = len(os.sched_getaffinity(0))
    if cores < 3:
        assert goal["holds"] is None
        assert goal["measured"].startswith("not measurable here: needs 3 cores (2 for the workers, "
                                           f"1 for the generator and replica); this machine has {cores}")
        assert "indicative reading only" in summary
    elif shutil.which("wrk"):
        assert goal["holds"] in (True, False) and "× with 2 workers" in goal["measured"]
    else:
        assert goal["holds"] is None and "without wrk" in goal["measured"]

    # Everything stopped: the main process, both workers, the replica, the resource tracker.
    assert workers["left_running"] == []
    assert not [p for p in workers["processes"] if p["pid"] and _alive(p["pid"])]
    assert bench_processes() <= before


def test_workers_goal_verdict_only_from_a_pinned_wrk_reading(tmp_path):
    from dataclasses import asdict

    from loadtests.bench.orchestrate import BenchOptions, Session
    from loadtests.bench.report import build, markdown
    from loadtests.bench.workers import plan_workers

    def goal(plan, n_worker_rps, generator="wrk -t2 -c32", busy=0.5):
        session = Session(BenchOptions(runs=2, rates=[]), tmp_path)
        session.targets["scoregate"] = None
        session.wrk = {"scoregate": [{"throughput": 4000.0, "cpu_us_per_request": 200.0}] * 2}
        session.closed = {"scoregate": [{"throughput": 3000.0}] * 2}
        if plan is not None:
            session.workers = {"workers": plan.workers, "plan": asdict(plan), "generator": generator,
                               "processes": [], "left_running": [], "runs": [
                                   {"throughput": rps, "cpu_us_per_request": 210.0, "client_cores_busy": busy,
                                    "worker_share": {"0": 0.5, "1": 0.5}} for rps in n_worker_rps]}
        data = build(session, {"pinning": "pinned", "rates": [], "started_at": 0.0}, "bench")
        return next(g for g in data["goals"] if g["goal"] == "--workers N scales ≥ 0.8 × N"), data

    fits = plan_workers(range(4), 2, 0, 1)
    row, data = goal(fits, [7000.0, 6800.0])
    assert row["holds"] is True and row["measured"].startswith("1.73× with 2 workers (needs ≥ 1.6×): 6900 vs 4000 req/s")
    text = markdown(data)
    assert "## Workers (`serve --workers 2`)" in text and "| 2 workers | 6900 (6800–7000) |" in text
    assert "worker 0 50%, worker 1 50%" in text and "indicative" not in text
    row, _ = goal(fits, [6000.0], busy=0.97)
    assert row["holds"] is False and "the generator may be the limit" in row["measured"]
    assert goal(fits, [9000.0], generator="loadtests closed loop")[0]["holds"] is None
    row, data = goal(plan_workers([0, 1], 2, 0, 1), [9000.0])  # contended: never a verdict
    assert row["holds"] is None and row["measured"].startswith("not measurable here: needs 3 cores")
    assert "indicative reading only" in markdown(data)
    assert goal(None, [])[0] == {"goal": "--workers N scales ≥ 0.8 × N", "holds": None,
                                 "measured": "not run (bench --workers N, N ≥ 2, measures it)"}
