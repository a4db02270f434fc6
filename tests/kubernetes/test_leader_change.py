"""A change of controller leader at the awkward moments, against the emulator: two
run_controller instances campaigning for the Lease, the first stepping down (gracefully:
the Lease is handed over at once) while the cluster is in the state the test set up, and
edits made while no controller holds the Lease. What the second leader does in its first
passes decides whether replicas that serve are stopped, and whether an edit is honoured."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest
from prometheus_client import CollectorRegistry

from serving.backends.kubernetes.api import ONLINE_DEPLOYMENTS
from serving.backends.kubernetes.discovery import rolled_out
from serving.backends.kubernetes.replicas import pod_ready
from serving.backends.kubernetes.running import KubernetesControllerSettings, run_controller
from tests.kubernetes import cluster as fates
from tests.kubernetes.test_autoscaling_k8s import Coordinator, after_polls
from tests.kubernetes.conftest import eventually
from tests.kubernetes.test_controller import NS, after_passes, kubectl_apply, sample, status_of

LEASE_NS = "scoregate-system"


class Leader(NamedTuple):
    stop: asyncio.Event
    task: asyncio.Task
    registry: CollectorRegistry


@pytest.fixture
async def leaders(kubeconfig, apiserver):
    """start(identity) runs a controller that campaigns for the Lease and returns once it
    holds it; step_down(leader) stops it gracefully (the Lease is released at once)."""
    running: list[Leader] = []

    def holder() -> str | None:
        lease = apiserver.get(("coordination.k8s.io", "v1", "leases"), LEASE_NS, "scoregate-controller")
        return ((lease or {}).get("spec") or {}).get("holderIdentity") or None

    async def start(identity: str) -> Leader:
        stop, registry = asyncio.Event(), CollectorRegistry()
        settings = KubernetesControllerSettings(kubeconfig=kubeconfig, namespaces=(NS,), interval_s=0.2,
                                                lease_namespace=LEASE_NS, identity=identity)
        task = asyncio.get_running_loop().create_task(run_controller(settings, stop, registry=registry))
        running.append(Leader(stop, task, registry))
        await eventually(lambda: holder() == identity and registry.get_sample_value(
            "scoregate_controller_reconcile_passes_total"), timeout_s=10, what=f"{identity} leading")
        return running[-1]

    async def step_down(leader: Leader) -> None:
        leader.stop.set()
        await asyncio.wait_for(leader.task, 10)
        assert holder() is None  # no controller acts until the next one takes the Lease

    yield start, step_down
    for stop, task, _ in running:
        stop.set()
        await asyncio.wait_for(task, 10)


def live_ready_pods(cluster) -> set[str]:
    return {p["metadata"]["uid"] for p in cluster.pods() if pod_ready(p) and not p["metadata"].get("deletionTimestamp")}


async def succeeded_unrecorded(apiserver, kube_api, cluster, start, step_down) -> set[str]:
    """The first version's replicas all ready, its status Succeeded (routers send it traffic),
    but the leader's record of that success, status.lastGood, never reached the cluster (the
    write was refused) before the leader stepped down. The uids of the serving pods."""
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    refused = apiserver.fail_next("PATCH", "onlinedeployments", 500, times=1000, subresource="status",
                                  when=lambda body: "lastGood" in apiserver.status_fields_written(body))
    first = await start("controller-a")
    cr = await eventually(lambda: (o := next(iter(apiserver.objects_of("onlinedeployments", NS)), None))
                          and o.get("status", {}).get("provisioningState") == "Succeeded" and o,
                          timeout_s=10, what="iris-blue Succeeded")
    assert rolled_out(cr)  # routers send it traffic
    await eventually(lambda: refused.hits >= 1, timeout_s=10, what="the success record refused")
    await step_down(first)
    refused.remaining = 0
    status = status_of(apiserver, "onlinedeployments", "iris-blue")
    assert "lastGood" not in status and status["rollout"]["state"] == "InProgress"
    serving = live_ready_pods(cluster)
    assert len(serving) == 2
    return serving


async def test_a_new_leader_keeps_a_ready_first_version_serving(apiserver, kube_api, cluster, leaders):
    """No edit: the next leader continues the rollout it finds in progress. Its first pass,
    before it has prepared the version itself, must leave the replicas taking traffic alone."""
    start, step_down = leaders
    serving = await succeeded_unrecorded(apiserver, kube_api, cluster, start, step_down)
    created = cluster.pods_created
    second = await start("controller-b")
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("rollout", {}).get("state") == "Succeeded" and s, timeout_s=10,
                              what="the rollout concluded by the new leader")
    assert status["lastGood"]["environment_variables"] == {"LOG_LEVEL": "info"}
    await after_passes(second.registry, 3)
    assert live_ready_pods(cluster) == serving and cluster.pods_created == created


async def test_a_new_leader_makes_an_edit_of_a_ready_first_version_an_update(apiserver, kube_api, cluster, leaders):
    """An edit arrives before the next leader's first pass. The ready replicas are the last
    good version: the edit must be an update that keeps them serving until new ones are
    ready (and a rollback target), not a create that stops them at once."""
    start, step_down = leaders
    serving = await succeeded_unrecorded(apiserver, kube_api, cluster, start, step_down)
    [old] = apiserver.objects_of("deployments", NS)

    # The edit, while no controller leads: a new version whose pods never become ready.
    cluster.fate = fates.pending_forever
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": "x"}}})
    second = await start("controller-b")
    await eventually(lambda: len(apiserver.objects_of("deployments", NS)) == 2, timeout_s=10,
                     what="the new version's Deployment")
    await after_passes(second.registry, 3)
    assert live_ready_pods(cluster) == serving  # every replica that took traffic still serves
    assert apiserver.get(fates.DEPLOYMENTS, NS, old["metadata"]["name"])["spec"]["replicas"] == 2
    status = status_of(apiserver, "onlinedeployments", "iris-blue")
    assert status["rollout"]["kind"] == "update"
    assert status["lastGood"]["environment_variables"] == {"LOG_LEVEL": "info"}
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"]
                     == "Updating", timeout_s=10)


async def test_a_new_leader_continues_a_first_version_still_downloading(apiserver, kube_api, cluster, leaders):
    """The leader steps down while the first version's pods are still downloading the model;
    the next one continues that rollout with the same pods (no download starts over)."""
    start, step_down = leaders
    cluster.fate = fates.pending_forever
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    first = await start("controller-a")
    await eventually(lambda: len(cluster.pods()) == 2, timeout_s=10)
    await step_down(first)
    pods = {p["metadata"]["uid"] for p in cluster.pods()}
    created = cluster.pods_created

    second = await start("controller-b")
    await after_passes(second.registry, 3)
    assert {p["metadata"]["uid"] for p in cluster.pods() if not p["metadata"].get("deletionTimestamp")} == pods
    assert cluster.pods_created == created


def replica_counts(apiserver) -> list[int]:
    return sorted(d["spec"]["replicas"] for d in apiserver.objects_of("deployments", NS))


async def scaled_between_leaders(apiserver, kube_api, leaders, *, autoscaled: bool) -> Leader:
    """A first version serving 2 replicas under one leader; the leader steps down;
    instanceCount is set to 3 while no controller leads; the next leader takes over."""
    start, step_down = leaders
    endpoint, deployment = sample("iris-endpoint.yaml")
    if not autoscaled:
        del deployment["spec"]["scaleSettings"]
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + [endpoint, deployment])
    first = await start("controller-a")
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                     == "Succeeded", timeout_s=10)
    assert replica_counts(apiserver) == [2]
    await step_down(first)
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceCount": 3}})
    return await start("controller-b")


@pytest.mark.parametrize("autoscaled", [False, True], ids=["instance_count", "target_utilization"])
async def test_an_instance_count_edit_between_leaders_is_honoured(apiserver, kube_api, cluster, leaders, autoscaled):
    """An instanceCount edit made while no controller held the Lease: the next leader runs 3.
    Without autoscaling the count is instanceCount, read by every pass (a regression guard:
    this held before, by construction). With target_utilization (1..4, no load reported:
    nothing decided) the edit is an explicit scale the autoscaler continues from: the next
    leader must not take the 2 replicas that run for the last leader's decision and ignore it."""
    second = await scaled_between_leaders(apiserver, kube_api, leaders, autoscaled=autoscaled)
    await after_passes(second.registry, 3)
    assert replica_counts(apiserver) == [3]
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("readyReplicas") == 3 and s, timeout_s=10)
    assert status["provisioningState"] == "Succeeded" and status["desiredReplicas"] == 3
    if autoscaled:
        await after_polls(second.registry, 2)  # still no signal: the autoscaler keeps the count it was given
        assert replica_counts(apiserver) == [3]


async def test_without_an_edit_the_next_leader_keeps_the_autoscaled_count(apiserver, kube_api, cluster, leaders):
    """The other side of the rule above: instanceCount unchanged since the last leader acted
    on it (status.observedInstanceCount), the next leader continues from the 4 replicas its
    autoscaler decided, not from instanceCount (2). The load reported then needs 2, which
    only brings it down after 20 intervals. (A regression guard: so it was before.)"""
    start, step_down = leaders
    coordinator = Coordinator(kube_api)
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    try:
        await coordinator.keep_publishing(3.0)  # 3 in flight + queued, 1 slot each, target 70 %: 4
        first = await start("controller-a")
        await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                         .get("readyReplicas") == 4 and s.get("provisioningState") == "Succeeded", timeout_s=10)
        await step_down(first)
        await coordinator.keep_publishing(0.9)
        second = await start("controller-b")
        await after_passes(second.registry, 3)
        await after_polls(second.registry, 2)
        assert replica_counts(apiserver) == [4]
    finally:
        await coordinator.stop()
