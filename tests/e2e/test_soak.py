"""The soak scenario, short: steady load with a fault every few seconds (a replica
killed, malformed requests, slowloris connections); the gateway keeps serving and its
memory stays within the bound. The 30-minute run is `python -m loadtests.soak`."""

from __future__ import annotations

import subprocess
import sys

from tests.support.gateway import REPO
from tests.support.manifests import write_deployment, write_endpoint


def test_short_soak_with_faults(make_gateway, tmp_path):
    # 6 s with a fault every 1 s: faults at about 1, 2, 3, 4 and 5 s, so each kind runs at
    # least once even if the malformed burst is slow (they start while < 5 s: the slowloris
    # fault still runs after a malformed burst of up to 3 s).
    write_endpoint(tmp_path, "soaked", traffic={"main": 100})
    write_deployment(tmp_path, "soaked", "main", instance_count=2)
    gw = make_gateway([str(tmp_path)])
    gw.wait_ready("soaked", ["main"])
    done = subprocess.run([sys.executable, "-m", "loadtests.soak", "--endpoint", "soaked", "--state-dir",
                           str(gw.state.root), "--duration", "6", "--rate", "20", "--fault-every", "1",
                           "--max-growth-mb", "64"], capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| verdict | within bounds |" in done.stdout
    assert '"kill_replica"' in done.stdout and '"malformed"' in done.stdout and '"slowloris"' in done.stdout
    assert "| endpoint answers at the end | 200 |" in done.stdout
