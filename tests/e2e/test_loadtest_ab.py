"""`python -m loadtests ab`: two real gateways, each from a checkout, loaded in turns by wrk.

The same code on both sides with the access log off on one: the command must pair the
bursts, report each side's CPU per request and the ratio, and leave no process behind.
The figures themselves are not asserted (no timing in tests); their shape and sanity are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from loadtests.bench.ab import Side, figures_of, report
from tests.support.gateway import REPO
from tests.support.processes import processes_mentioning


def ab_processes() -> set[int]:
    return processes_mentioning(b"scoregate-ab-")


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (apt install wrk; .ci/run does)")
def test_two_gateways_are_loaded_in_pairs_and_compared(tmp_path):
    before = ab_processes()
    out = tmp_path / "ab.json"
    done = subprocess.run([sys.executable, "-m", "loadtests", "ab", str(REPO), str(REPO), "--b-args",
                           "--access-log off", "--pairs", "2", "--seconds", "1", "--output", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["pairs"] == 2 and figures["b"].endswith("--access-log off")
    for side in ("a", "b"):
        bursts = figures["bursts"][side]
        assert len(bursts) == 2 and all(b["throughput"] > 0 and not b["errors"] for b in bursts)
        assert 1 < figures["cpu_us_per_request"][side]["median"] < 10_000
    assert 0.2 < figures["ratio_a_over_b"]["median"] < 5
    assert "ratio A/B per pair: " in done.stdout
    assert ab_processes() <= before  # both gateways and their replicas stopped


def test_not_a_checkout_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-m", "loadtests", "ab", str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "is not a scoregate checkout" in done.stderr


def test_the_verdict_needs_the_whole_spread_on_one_side():
    def bursts(cpus):
        return [{"cpu_us_per_request": c, "throughput": 1000.0} for c in cpus]

    a, b = Side(REPO), Side(REPO, ("--access-log", "off"))
    clear = figures_of(a, b, [bursts([66, 64, 65, 67]), bursts([60, 60, 61, 60])], seconds=3, connections=32)
    assert clear["ratio_a_over_b"]["q1"] > 1 and report(clear).endswith("B costs less")
    mixed = figures_of(a, b, [bursts([66, 58, 65, 57]), bursts([60, 62, 61, 60])], seconds=3, connections=32)
    assert report(mixed).endswith("no difference beyond the spread")


def test_handshake_bursts_are_compared_per_handshake():
    def bursts(cpus):
        return [{"cpu_us_per_handshake": c, "handshakes_per_s": 700.0} for c in cpus]

    a, b = Side(REPO), Side(REPO)
    figures = figures_of(a, b, [bursts([480, 470, 490]), bursts([500, 505, 498])], seconds=3, connections=32,
                         unit="handshake")
    assert figures["unit"] == "handshake" and "connections" not in figures
    assert figures["cpu_us_per_handshake"]["a"]["median"] == 480 and figures["ratio_a_over_b"]["q3"] < 1
    text = report(figures)
    assert "CPU per handshake, median" in text and "s_time bursts" in text and text.endswith("A costs less")
