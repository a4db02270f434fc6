"""One gateway per state dir: a second `scoregate serve` on a dir being served refuses
to start (it would run the same replicas from the same store, then take gateway.json
away from the first when it stops); the dir is free again once its gateway has gone,
also after kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys

from tests.support.gateway import REPO, GatewayProcess


def second_serve(state_root):
    return subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(state_root),
                           "--port", "0", "--admin-port", "0"], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def test_a_second_gateway_on_a_served_state_dir_refuses_and_the_first_keeps_serving(tmp_path):
    first = GatewayProcess(tmp_path / "state").start()
    try:
        info = first.info
        refused = second_serve(first.state.root)
        assert refused.returncode == 1
        assert f"another gateway (pid {first.process.pid}) is serving the state dir" in refused.stderr
        assert first.state.read_gateway() == info  # gateway.json still names the first, which the CLI reaches
        assert first.cli_json("endpoint", "list") == []
        first.stop(signal.SIGKILL)
        # kill -9 leaves no lock behind: the next gateway starts on the dir.
        again = GatewayProcess(tmp_path / "state").start()
        try:
            assert again.state.read_gateway().pid not in (info.pid, None) and again.cli_json("endpoint", "list") == []
        finally:
            again.kill_everything()
    finally:
        first.kill_everything()
