"""The cluster verbs' first failure a user meets: a --kubeconfig that is not there."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("verb", ["controller", "router", "batch-runner"])
def test_a_missing_kubeconfig_is_named(verb, tmp_path):
    missing = tmp_path / "typo.yaml"
    extra = ["--state-dir", str(tmp_path / "state")] if verb == "batch-runner" else []
    done = subprocess.run([sys.executable, "-m", "serving.cli", verb, "--backend", "kubernetes",
                           "--kubeconfig", str(missing), *extra], capture_output=True, text=True, timeout=60)
    # kubernetes-asyncio's own words were "Expected key current-context in kube-config"
    assert done.returncode == 1 and f"no kubeconfig file {missing}" in done.stderr, done.stderr
