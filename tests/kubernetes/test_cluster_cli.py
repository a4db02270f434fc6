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


@pytest.mark.parametrize("verb", ["controller", "router", "batch-runner"])
def test_namespaces_and_all_namespaces_are_either_or(verb, tmp_path):
    """Both were taken, --all-namespaces winning silently (the signing namespace moving to
    `default` with it); the docs show them as alternatives."""
    extra = ["--state-dir", str(tmp_path / "state")] if verb == "batch-runner" else []
    done = subprocess.run([sys.executable, "-m", "serving.cli", verb, "--backend", "kubernetes", "--namespace", "team-a",
                           "--all-namespaces", *extra], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not allowed with argument" in done.stderr, done.stderr
