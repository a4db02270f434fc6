"""A deployment whose update failed still serves its last good version, and the user can
still scale it: `scoregate deployment scale` changes how many replicas run, whichever
version runs (a replica count is not part of a version: a change of instance_count alone
only adds or removes replicas, docs/architecture.md)."""

from __future__ import annotations

from tests.support.gateway import wait_for
from tests.support.manifests import write_deployment, write_endpoint


def _settled(gw, endpoint, name, timeout_s=30):
    return wait_for(lambda: (lambda d: d if d["provisioning_state"] in ("Succeeded", "Failed") else None)(
        gw.deployment(endpoint, name)), timeout_s, f"{endpoint}/{name} to settle")


def _ready_pids(gw, endpoint, name):
    return {r["pid"] for r in gw.deployment(endpoint, name)["replicas"] if r["state"] == "ready"}


def test_scaling_a_rolled_back_deployment_scales_the_version_that_serves(gateway, tmp_path):
    write_endpoint(tmp_path, "rolled", traffic={"main": 100})
    write_deployment(tmp_path, "rolled", "main", instance_count=1)
    gateway.cli_json("apply", "-f", str(tmp_path))
    assert _settled(gateway, "rolled", "main")["provisioning_state"] == "Succeeded"
    serving = _ready_pids(gateway, "rolled", "main")

    write_deployment(tmp_path, "rolled", "main", instance_count=1, env={"INIT_FAIL": "1"})
    gateway.cli_json("apply", "-f", str(tmp_path))
    shown = _settled(gateway, "rolled", "main")
    assert shown["provisioning_state"] == "Failed" and shown["rollout"]["rolled_back"] is True
    assert _ready_pids(gateway, "rolled", "main") == serving

    scaled = gateway.cli_json("deployment", "scale", "--name", "main", "--endpoint-name", "rolled",
                              "--instance-count", "2")
    assert scaled["instance_count"] == 2
    # The old version, the one that serves, now runs on two replicas.
    wait_for(lambda: len(_ready_pids(gateway, "rolled", "main")) == 2, 30,
             "the rolled-back deployment to run 2 ready replicas")
    assert serving <= _ready_pids(gateway, "rolled", "main")
