"""A verb whose optional packages are not installed says so in one line (README: every
error is one line on stderr), as a user without the extra sees it: the package is made
missing with a stand-in that fails to import, ahead of the real one on the path."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.gateway import REPO


def test_loadtest_without_its_extra_is_one_line(tmp_path):
    (tmp_path / "hdrh").mkdir()
    (tmp_path / "hdrh" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hdrh'\", name='hdrh')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "serving.cli", "loadtest", "-h"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr == ("error: scoregate loadtest needs the loadtests extra (hdrh is not installed): "
                           "pip install 'scoregate[loadtests]'\n"), done.stderr
