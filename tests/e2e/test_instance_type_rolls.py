"""Editing an instance type on the local backend rolls the deployments that use it.

Locally limits.memory is each replica's address space (RLIMIT_AS) and limits.cpu its CPU
affinity; they are set when a replica starts, so an edited instance type must start new
replicas: a rolling update with surge and no failed request, rolled back (old replicas
and old limits kept) when the new content cannot run here."""

from __future__ import annotations

import asyncio

import yaml

from tests.support.gateway import wait_for
from tests.support.load import SteadyLoad
from tests.support.manifests import write_deployment, write_endpoint

GiB = 1024 ** 3


def write_instance_type(folder, name: str, memory: str, cpu: str = "1", request_cpu: str = "500m") -> None:
    (folder / f"{name}-instancetype.yml").write_text(yaml.safe_dump({
        "kind": "InstanceType", "name": name,
        "resources": {"requests": {"cpu": request_cpu, "memory": "256Mi"}, "limits": {"cpu": cpu, "memory": memory}}}))


def apply(gw, folder):
    return gw.cli_json("apply", "-f", str(folder))


def address_space_limit(pid: int) -> int:
    line = next(x for x in open(f"/proc/{pid}/limits").read().splitlines() if x.startswith("Max address space"))
    return int(line.split()[3])


def ready_pids(gw, endpoint: str) -> set[int]:
    return {r["pid"] for r in gw.deployment(endpoint, "main")["replicas"] if r["state"] == "ready"}


def test_editing_an_instance_type_rolls_its_deployments_without_dropping_requests(gateway, tmp_path):
    write_instance_type(tmp_path, "roller", "3Gi")
    write_endpoint(tmp_path, "sized", traffic={"main": 100})
    path = write_deployment(tmp_path, "sized", "main", instance_count=2, env={"SLEEP_S": "0.01"})
    body = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**body, "instance_type": "roller"}))
    apply(gateway, tmp_path)
    first = wait_for(lambda: (d := gateway.deployment("sized", "main"))["provisioning_state"] == "Succeeded"
                     and len(ready_pids(gateway, "sized")) == 2 and d, 30, "the first version")
    old_pids = ready_pids(gateway, "sized")
    assert {address_space_limit(pid) for pid in old_pids} == {3 * GiB}

    async def scenario():
        key = gateway.keys("sized")[0]
        load = SteadyLoad(gateway.info.ca_cert, f"{gateway.scoring_url}/api/v1/endpoint/sized/score",
                          {"Authorization": f"Bearer {key}"}, rate=40).start()
        await asyncio.sleep(1.0)
        write_instance_type(tmp_path, "roller", "4Gi")
        await asyncio.to_thread(apply, gateway, tmp_path)
        shown = await asyncio.to_thread(
            wait_for, lambda: (d := gateway.deployment("sized", "main"))["version"] != first["version"]
            and d["provisioning_state"] == "Succeeded" and len(ready_pids(gateway, "sized")) == 2
            and not ready_pids(gateway, "sized") & old_pids and d, 30, "the new version")
        await asyncio.sleep(0.5)
        return shown, await load.stop()

    shown, result = asyncio.run(scenario())
    assert shown["rollout"]["kind"] == "update"
    assert result.sent > 40 and result.failed == 0, (result.statuses, result.errors)
    new_pids = ready_pids(gateway, "sized")
    assert {address_space_limit(pid) for pid in new_pids} == {4 * GiB}

    # Content this machine cannot run: the rollout fails in its environment stage and the
    # replicas of the last good version (4 GiB) serve on.
    write_instance_type(tmp_path, "roller", "4Gi", cpu="512", request_cpu="512")
    apply(gateway, tmp_path)
    failed = wait_for(lambda: (d := gateway.deployment("sized", "main"))["provisioning_state"] == "Failed" and d,
                      30, "the failed rollout")
    assert failed["rollout"]["failed_stage"] == "environment" and failed["rollout"]["rolled_back"] is True
    assert "instance type roller requests 512 CPUs" in failed["rollout"]["reason"]
    assert ready_pids(gateway, "sized") == new_pids
    assert {address_space_limit(pid) for pid in new_pids} == {4 * GiB}
