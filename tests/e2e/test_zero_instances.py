"""Traffic only goes to deployments that have instances: a deployment with 0 instances
(instance_count 0, or autoscaled with min_instances 0 from 0) gets no live or mirrored
traffic, by `endpoint update`, YAML apply or `deployment scale` — each refused with a
message naming the traffic, and nothing changes."""

from __future__ import annotations

import threading

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.manifests import write_deployment, write_endpoint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """ep1: d1 (1 instance, all the traffic), d2 (0 instances), auto (autoscaled, min 1)."""
    folder = tmp_path_factory.mktemp("zero")
    write_endpoint(folder, "ep1", traffic={"d1": 100})
    write_deployment(folder, "ep1", "d1")
    write_deployment(folder, "ep1", "d2", instance_count=0)
    write_deployment(folder, "ep1", "auto", scale_settings={
        "type": "target_utilization", "min_instances": 1, "max_instances": 2, "polling_interval": 1})
    gw = GatewayProcess(folder / "state", [str(folder)]).start()
    try:
        gw.wait_ready("ep1", ["d1", "d2", "auto"])
        gw.folder = folder
        yield gw
    finally:
        gw.kill_everything()


def _traffic(gateway) -> dict:
    return gateway.cli_json("endpoint", "show", "-n", "ep1")["traffic"]


def test_update_refuses_live_and_mirrored_traffic_to_a_deployment_with_no_instances(gateway):
    for flag, value, field in (("--traffic", "d2=100", "traffic.d2=100"),
                               ("--traffic", "d1=90 d2=10", "traffic.d2=10"),
                               ("--mirror-traffic", "d2=10", "mirror_traffic.d2=10")):
        done = gateway.cli("endpoint", "update", "-n", "ep1", flag, value)
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert field in done.stderr and "'d2' has no instances" in done.stderr, done.stderr
    assert _traffic(gateway) == {"d1": 100}


def test_yaml_apply_is_checked_too(gateway, tmp_path):
    """The endpoint's new split, and a deployment applied with 0 instances while its stored
    endpoint sends it traffic."""
    write_endpoint(tmp_path, "ep1", traffic={"d2": 100})
    done = gateway.cli("apply", "-f", str(tmp_path / "ep1-endpoint.yml"))
    assert done.returncode == 2 and "traffic.d2=100" in done.stderr, done.stderr
    write_deployment(tmp_path, "ep1", "d1", instance_count=0)
    done = gateway.cli("apply", "-f", str(tmp_path / "ep1-d1-deployment.yml"))
    assert done.returncode == 2 and "traffic.d1=100" in done.stderr, done.stderr
    assert gateway.deployment("ep1", "d1")["instance_count"] == 1 and _traffic(gateway) == {"d1": 100}
    # Autoscaled with min_instances 0: nothing would ever bring a replica back (a refused
    # request is no load the autoscaler sees), so scale to zero is refused outright.
    write_deployment(tmp_path, "ep1", "d1", instance_count=0, scale_settings={
        "type": "target_utilization", "min_instances": 0, "max_instances": 2})
    done = gateway.cli("apply", "-f", str(tmp_path / "ep1-d1-deployment.yml"))
    assert done.returncode == 2 and "min_instances: must be at least 1" in done.stderr, done.stderr
    # Instances and traffic in the same apply: accepted.
    write_deployment(tmp_path, "ep1", "d1", instance_count=1)
    write_deployment(tmp_path, "ep1", "d2", instance_count=1)
    write_endpoint(tmp_path, "ep1", traffic={"d1": 100}, mirror={"d2": 10})
    assert gateway.cli("apply", "-f", str(tmp_path)).returncode == 0
    assert gateway.cli_json("endpoint", "show", "-n", "ep1")["mirror_traffic"] == {"d2": 10}
    assert gateway.cli("endpoint", "update", "-n", "ep1", "--mirror-traffic", "").returncode == 0


def test_scaling_a_deployment_with_traffic_to_zero_is_refused(gateway):
    """Refused as `endpoint update` to a deployment with no instances is: the same rule,
    the same exit code (2: the gateway refused what was asked; nothing changed)."""
    done = gateway.cli("deployment", "scale", "-n", "d1", "-e", "ep1", "--instance-count", "0")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("error: deployment 'd1' carries traffic.d1=100 of endpoint 'ep1'"), done.stderr
    assert "0 instances" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert gateway.deployment("ep1", "d1")["instance_count"] == 1


def test_deleting_a_deployment_with_traffic_is_refused_alike(gateway):
    done = gateway.cli("deployment", "delete", "-n", "d1", "-e", "ep1", "-y")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("error: deployment 'd1' still receives 100% of the traffic"), done.stderr
    assert gateway.deployment("ep1", "d1")["instance_count"] == 1


def test_what_keeps_instances_may_scale_to_zero(gateway):
    """A deployment without traffic may be scaled to 0, and so may an autoscaled one whose
    min_instances keeps a replica; an autoscaled one with min 1 may get traffic at
    instance_count 0."""
    assert gateway.cli("deployment", "scale", "-n", "d2", "-e", "ep1", "--instance-count", "0").returncode == 0
    assert gateway.cli("deployment", "scale", "-n", "auto", "-e", "ep1", "--instance-count", "0").returncode == 0
    done = gateway.cli("endpoint", "update", "-n", "ep1", "--traffic", "d1=50 auto=50")
    assert done.returncode == 0, done.stderr
    assert _traffic(gateway) == {"d1": 50, "auto": 50}


def _endpoint_document(traffic: dict) -> dict:
    return {"documents": [{"source": "race", "base_dir": ".", "body": {
        "name": "ep1", "auth_mode": "key", "traffic": traffic}}]}


def test_a_scale_to_zero_and_traffic_to_that_deployment_at_once_never_both_succeed(gateway):
    """Each change checks what is stored, then writes: two changes that would each pass
    their check alone must not interleave (d2 scaled to 0 while traffic to it is applied
    — both checks read the other's old state, and d2 would be left with traffic and no
    instance). The admin API makes changes one at a time."""
    rounds, both = 10, []  # the old code let both through in the first rounds, every time it was run
    for _ in range(rounds):
        assert gateway.admin("POST", "/api/v1/apply", _endpoint_document({"d1": 100}))[0] == 200
        assert gateway.admin("POST", "/api/v1/endpoints/ep1/deployments/d2/scale", {"instance_count": 1})[0] == 200
        start = threading.Barrier(2)
        answers = {}

        def scale():
            start.wait()
            answers["scale"] = gateway.admin("POST", "/api/v1/endpoints/ep1/deployments/d2/scale",
                                             {"instance_count": 0})[0]

        def apply():
            start.wait()
            answers["apply"] = gateway.admin("POST", "/api/v1/apply", _endpoint_document({"d1": 90, "d2": 10}))[0]

        threads = [threading.Thread(target=scale), threading.Thread(target=apply)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(answers.values()) in ([200, 400], [200, 409]), answers  # exactly one refused
        count, traffic = gateway.deployment("ep1", "d2")["instance_count"], _traffic(gateway)
        assert not (count == 0 and traffic.get("d2")), (answers, count, traffic)
        both.append(answers["scale"] == answers["apply"])
    assert not any(both)
