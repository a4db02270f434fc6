"""The key-timing measurement runs against a real gateway (its figures are read by
people, in docs/security.md; nothing here asserts a timing)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.gateway import REPO
from tests.support.manifests import write_deployment, write_endpoint


def test_auth_timing_measures_both_kinds_of_wrong_key(make_gateway, tmp_path):
    write_endpoint(tmp_path, "keyed", traffic={"main": 100})
    write_deployment(tmp_path, "keyed", "main")
    gw = make_gateway([str(tmp_path)])
    gw.wait_ready("keyed", ["main"])
    done = subprocess.run([sys.executable, "-m", "loadtests.auth_timing", "--endpoint", "keyed", "--state-dir",
                           str(gw.state.root), "--samples", "120", "--sources", "30"],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| none shared |" in done.stdout and "| all but one |" in done.stdout
    assert "difference of trimmed means" in done.stdout
