"""deployment_status (pure): an OnlineDeployment says Succeeded when the replicas the
controller wants of its current version are ready — for an autoscaled deployment the
autoscaler's count, the one the rollout is judged against — not `instanceCount`; it shows
that count as `desiredReplicas`.
Routers send traffic once it says Succeeded (discovery.rolled_out), so the two counts must
agree (test_autoscaling_k8s.py shows what happens when they do not, end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.backends import EXITED, READY, STARTING, ReplicaView
from serving.backends.kubernetes.status import deployment_status
from serving.backends.kubernetes.translation import deployment_from_custom_resource

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
_, CR = [d for d in yaml.safe_load_all((SAMPLES / "iris-endpoint.yaml").read_text()) if d]
CR = {**CR, "metadata": {**CR["metadata"], "generation": 1}}
SAMPLE = deployment_from_custom_resource(CR)  # instanceCount 2, autoscaled 1..4
assert SAMPLE.instance_count == 2 and SAMPLE.scale_settings.type == "target_utilization"
HASH = SAMPLE.replica_spec_hash()


def replicas(*states: str) -> list[ReplicaView]:
    views = []
    for i, state in enumerate(states):
        exited = state == EXITED
        views.append(ReplicaView(f"team-a/pod-{i}", "iris", "blue", HASH, state, "10.0.0.1", 8080, None, 1.0,
                                 restarts=1 if exited else 0, failed_stage="init" if exited else None,
                                 reason="init: the model server exited with code 1: boom" if exited
                                 else "init: waiting for init() and the readiness probe" if state == STARTING
                                 else ""))
    return views


def wants(n: int):
    return lambda deployment: n


@pytest.mark.parametrize("states, wanted, expected", [
    # the autoscaler wants 4: two ready and two crashed (waiting for their restart) is not
    # Succeeded — judged by instanceCount (2) it was, and routers sent traffic
    ((READY, READY, EXITED, EXITED), 4, "Failed"),
    ((READY, READY, STARTING, STARTING), 4, "Creating"),
    ((READY, READY, READY, READY), 4, "Succeeded"),
    # the autoscaler wants 1: one ready is Succeeded — judged by instanceCount it never was
    ((READY,), 1, "Succeeded"),
    # not autoscaled (or no autoscaler): instanceCount
    ((READY, EXITED), None, "Failed"),
    ((READY, READY), None, "Succeeded"),
])
def test_succeeded_when_the_replicas_the_controller_wants_are_ready(states, wanted, expected):
    extra = {} if wanted is None else {"wanted": wants(wanted)}
    status = deployment_status(CR, None, replicas(*states), SAMPLE, **extra)
    assert status["provisioningState"] == expected
    assert status["readyReplicas"] == states.count(READY)
    assert status["desiredReplicas"] == (SAMPLE.instance_count if wanted is None else wanted)


def test_a_scale_down_below_instance_count_stays_succeeded():
    """The autoscaler took a rolled-out deployment down to 1 replica (instanceCount 2)."""
    before = {**CR, "status": deployment_status(CR, None, replicas(READY, READY), SAMPLE, wants(2))}
    assert before["status"]["provisioningState"] == "Succeeded"
    after = deployment_status(before, None, replicas(READY), SAMPLE, wants(1))
    assert after["provisioningState"] == "Succeeded" and after["readyReplicas"] == 1
    assert after["desiredReplicas"] == 1


def test_an_object_that_cannot_be_served_wants_no_replicas():
    status = deployment_status(CR, "waiting for its endpoint", replicas(READY), SAMPLE, wants(3))
    assert (status["provisioningState"], status["desiredReplicas"], status["readyReplicas"]) == ("Failed", 0, 0)


def test_an_invalid_edit_of_a_served_deployment_shows_the_served_version():
    """The store still serves the last valid version (`kept`): Failed with the problem, that
    version's replicas and specHash — not 0 of a version nobody runs."""
    edited = {**CR, "spec": {**CR["spec"], "instanceType": "cpu-smal"}}
    problem = "OnlineDeployment team-a/iris-blue: spec.instanceType: no InstanceType named cpu-smal"
    status = deployment_status(edited, problem, replicas(READY, READY), None, wants(2), kept=SAMPLE)
    assert status == {"provisioningState": "Failed", "stage": "validation", "reason": problem, "replicas": 2,
                      "readyReplicas": 2, "desiredReplicas": 2, "specHash": HASH, "observedGeneration": 1}


def test_the_instance_count_acted_on_is_kept_for_the_next_leader():
    """observedInstanceCount: what the controller's last pass acted on (a next leader that
    finds another spec.instanceCount applies it as an explicit scale); left out, so kept as
    it was by the merge patch, while the controller has not acted on the deployment yet."""
    edited = {**CR, "spec": {**CR["spec"], "instanceCount": 3}}
    status = deployment_status(edited, None, replicas(READY, READY), SAMPLE, wants(2), acted_on=lambda d: 2)
    assert status["observedInstanceCount"] == 2
    assert "observedInstanceCount" not in deployment_status(edited, None, replicas(READY, READY), SAMPLE, wants(2))
