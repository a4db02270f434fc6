"""The controller's autoscaler on a cluster: it reads the routers' summed utilization from
the shares ConfigMap (as the coordinating router writes it) and scales the current
version's apps/v1 Deployment within minInstances..maxInstances; a load that stops being
reported does not hold replicas up forever. Runs run_controller against the emulator with
the sample iris deployment (target 70 %, 1..4 replicas, polling every second, 1 slot)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from serving.backends.kubernetes.api import CONFIG_MAPS, ONLINE_DEPLOYMENTS
from serving.backends.kubernetes.coordination import SHARES_CONFIG_MAP, SHARES_KEY
from serving.backends.kubernetes.discovery import rolled_out
from serving.backends.kubernetes.replicas import pod_ready
from serving.backends.kubernetes.running import KubernetesControllerSettings, run_controller
from serving.backends.kubernetes.shares import DeploymentShares, SharesDoc
from tests.kubernetes import cluster as fates
from tests.kubernetes.conftest import eventually
from tests.kubernetes.test_controller import NS, after_passes, kubectl_apply, sample, status_of

ROUTERS_NS = "scoregate-system"


class Coordinator:
    """Writes the shares ConfigMap the way the routers' coordinator does: a new version each
    round, `level` = the routers' summed (in flight + queued) per deployment."""

    def __init__(self, kube_api) -> None:
        self.api, self.version, self.level = kube_api, 0, 0.0
        self._task: asyncio.Task | None = None

    async def publish(self, level: float) -> None:
        self.level, self.version = level, self.version + 1
        shares = DeploymentShares(1, ("team-a/p1", "team-a/p2"), {"router-a": {}, "router-b": {}},
                                  {"router-a": {}, "router-b": {}}, level)
        doc = SharesDoc(self.version, "router-a", ("router-a", "router-b"), {"iris/blue": shares})
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": SHARES_CONFIG_MAP, "namespace": ROUTERS_NS}, "data": {SHARES_KEY: doc.to_json()}}
        if self.version == 1:
            await self.api.create(CONFIG_MAPS, ROUTERS_NS, body)
        else:
            await self.api.replace(CONFIG_MAPS, ROUTERS_NS, SHARES_CONFIG_MAP, body)

    async def keep_publishing(self, level: float, every_s: float = 0.5) -> None:
        await self.stop()

        async def loop() -> None:
            while True:
                await self.publish(level)
                await asyncio.sleep(every_s)
        self._task = asyncio.get_running_loop().create_task(loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


@pytest.fixture
async def started(kubeconfig, kube_api, cluster):
    running = []

    async def start(**overrides):
        await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
        stop, registry = asyncio.Event(), CollectorRegistry()
        settings = KubernetesControllerSettings(kubeconfig=kubeconfig, namespaces=(NS,), interval_s=0.2,
                                                leader_election=False, **overrides)
        task = asyncio.get_running_loop().create_task(run_controller(settings, stop, registry=registry))
        running.append((stop, task))
        return registry

    coordinator = Coordinator(kube_api)
    yield start, coordinator
    await coordinator.stop()
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 10)


def replicas(apiserver) -> int | None:
    deployments = apiserver.objects_of("deployments", NS)
    return deployments[0]["spec"]["replicas"] if len(deployments) == 1 else None


def decisions(registry: CollectorRegistry, direction: str) -> float:
    return registry.get_sample_value("scoregate_autoscale_decisions_total",
                                     {"endpoint": "iris", "deployment": "blue", "direction": direction}) or 0.0


def polls(registry: CollectorRegistry) -> int:
    """Polling intervals the autoscaler has evaluated for iris/blue (0 before its first)."""
    return int(registry.get_sample_value("scoregate_autoscale_polls_total",
                                         {"endpoint": "iris", "deployment": "blue"}) or 0)


async def after_polls(registry: CollectorRegistry, n: int, timeout_s: float = 10.0) -> None:
    """Wait until the autoscaler has evaluated iris/blue `n` more times than it had at the call.
    A poll reads the utilization and decides in one step (no await in between), so each of
    them read it after the call. A test that asserts "nothing decided" waits on this instead
    of sleeping: a sleep passes even when no poll ran."""
    since = polls(registry)
    await eventually(lambda: polls(registry) >= since + n, timeout_s=timeout_s,
                     what=f"{n} autoscaler polls after poll {since}", context=lambda: f"polls: {polls(registry)}")


async def test_summed_utilization_scales_the_deployment_up_then_down(apiserver, cluster, started, caplog):
    start, coordinator = started
    caplog.set_level(logging.INFO, logger="scoregate.autoscaler")
    await coordinator.publish(0.9)  # 0.9 in flight + queued over 2 replicas: under the 70 % target
    registry = await start()
    await eventually(lambda: replicas(apiserver) == 2 and len(cluster.pods()) == 2, timeout_s=10)

    # Three requests busy or queued across the routers: 3 / 0.7 → 5 replicas, capped at maxInstances.
    await coordinator.keep_publishing(3.0)
    await eventually(lambda: replicas(apiserver) == 4 and len(cluster.pods()) == 4, timeout_s=10)
    assert decisions(registry, "up") == 1
    assert registry.get_sample_value("scoregate_autoscale_desired_replicas",
                                     {"endpoint": "iris", "deployment": "blue"}) == 4
    assert "autoscale iris/blue up: 2 -> 4 replicas" in caplog.text
    assert not apiserver.objects_of("horizontalpodautoscalers", NS)
    await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                     .get("provisioningState") == "Succeeded" and s.get("readyReplicas") == 4, timeout_s=10)
    assert status_of(apiserver, "onlinedeployments", "iris-blue")["desiredReplicas"] == 4

    # Load drops to half a request: scaled down only after ~20 polling intervals of it.
    low_since = time.monotonic()
    await coordinator.keep_publishing(0.5)
    await eventually(lambda: replicas(apiserver) == 1, timeout_s=60, interval_s=0.1)
    assert time.monotonic() - low_since >= 18  # 20 intervals of 1 s, minus the one already running
    await eventually(lambda: len(cluster.pods()) == 1, timeout_s=10)
    assert decisions(registry, "down") == 1 and decisions(registry, "up") == 1
    assert "below target 70% for 20 intervals" in caplog.text
    # One replica is all the controller wants now (instanceCount is 2): still Succeeded.
    status = await eventually(lambda: (s := status_of(apiserver, "onlinedeployments", "iris-blue"))
                              .get("readyReplicas") == 1 and s, timeout_s=10)
    assert status["provisioningState"] == "Succeeded" and status["desiredReplicas"] == 1


async def test_a_load_that_stops_being_reported_does_not_count_forever(apiserver, cluster, started, caplog):
    start, coordinator = started
    caplog.set_level(logging.INFO, logger="scoregate.autoscaler")
    registry = await start(utilization_max_age_s=2.0)  # a poll (1 s) sees the one report while fresh
    await eventually(lambda: replicas(apiserver) == 2, timeout_s=10)
    await after_polls(registry, 2)  # no ConfigMap (routers never coordinated): no signal, nothing decided
    assert replicas(apiserver) == 2 and decisions(registry, "down") == decisions(registry, "up") == 0
    assert registry.get_sample_value("scoregate_autoscale_utilization_ratio",
                                     {"endpoint": "iris", "deployment": "blue"}) is None  # not even a 0

    await coordinator.publish(3.0)  # one report of a high load, then the routers go silent
    await eventually(lambda: replicas(apiserver) == 4, timeout_s=10)

    # Past its age bound the silent report is no load: utilization 0, and the polls count
    # toward the usual conservative scale-down (the first test follows that one to its end).
    def utilization():
        return registry.get_sample_value("scoregate_autoscale_utilization_ratio",
                                         {"endpoint": "iris", "deployment": "blue"})

    await eventually(lambda: utilization() == 0.0, timeout_s=10, what="the silent report to count as no load")
    await after_polls(registry, 2)
    assert utilization() == 0.0 and replicas(apiserver) == 4 and decisions(registry, "down") == 0


async def test_a_new_leader_during_a_rolling_update_continues_from_the_count_wanted(apiserver, kube_api, cluster,
                                                                                    kubeconfig):
    """Leadership changes while a rolling update runs its surge pod (2 old + 1 new): the new
    leader's autoscaler must continue from the 2 replicas the last leader wanted — what the
    load needs — not from the 3 pods that run, or the rollout ends one replica high."""
    await kubectl_apply(kube_api, sample("instancetypes.yaml") + sample("iris-endpoint.yaml"))
    coordinator = Coordinator(kube_api)
    await coordinator.keep_publishing(0.9)  # 0.9 in flight + queued, target 70 %: 2 replicas
    running: list[tuple[asyncio.Event, asyncio.Task]] = []

    def start(identity: str) -> CollectorRegistry:
        stop, registry = asyncio.Event(), CollectorRegistry()
        settings = KubernetesControllerSettings(kubeconfig=kubeconfig, namespaces=(NS,), interval_s=0.2,
                                                lease_namespace=ROUTERS_NS, identity=identity)
        running.append((stop, asyncio.get_running_loop().create_task(run_controller(settings, stop,
                                                                                    registry=registry))))
        return registry

    def desired(registry: CollectorRegistry) -> float | None:
        return registry.get_sample_value("scoregate_autoscale_desired_replicas",
                                         {"endpoint": "iris", "deployment": "blue"})

    try:
        first = start("controller-a")
        await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState")
                         == "Succeeded", timeout_s=10)  # the first version is the last good one
        assert replicas(apiserver) == 2 and desired(first) == 2
        [old] = apiserver.objects_of("deployments", NS)

        # A new version whose pods keep downloading the model: the surge pod runs beside the old two.
        cluster.fate = fates.pending_forever
        edit = {"spec": {"environmentVariables": {"LOG_LEVEL": "debug"}}}
        await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", edit)
        await eventually(lambda: sorted(d["spec"]["replicas"] for d in apiserver.objects_of("deployments", NS))
                         == [1, 2] and len(cluster.pods()) == 3, timeout_s=10)

        second = start("controller-b")
        stop, task = running[0]
        stop.set()  # the leader steps down gracefully; the other takes the Lease over
        await asyncio.wait_for(task, 10)
        await eventually(lambda: desired(second) is not None, timeout_s=10)
        [lease] = [x for x in apiserver.objects_of("leases", ROUTERS_NS)
                   if x["metadata"]["name"] == "scoregate-controller"]
        assert lease["spec"]["holderIdentity"] == "controller-b"

        # The new version's pods become ready: the rollout finishes under the new leader.
        cluster.fate = fates.running_ready
        for pod in cluster.pods():
            if not pod_ready(pod):
                apiserver.update(fates.PODS, NS, pod["metadata"]["name"],
                                 lambda p: p.__setitem__("status", fates.running_ready(p)))

        def rolled_out() -> int | None:
            deployments, pods = apiserver.objects_of("deployments", NS), cluster.pods()
            if len(deployments) != 1 or deployments[0]["metadata"]["uid"] == old["metadata"]["uid"]:
                return None
            count = deployments[0]["spec"]["replicas"]
            return count if len(pods) == count and all(map(pod_ready, pods)) else None

        assert await eventually(rolled_out, timeout_s=15) == 2
        assert desired(second) == 2
        assert decisions(second, "up") == 0
    finally:
        await coordinator.stop()
        for stop, task in running:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_traffic_starts_only_when_an_edit_would_keep_the_serving_replicas(apiserver, kube_api, cluster,
                                                                               started):
    """The autoscaler wants 4 replicas of a first version (instanceCount 2): two are ready and
    two crashed once, waiting for their restart. Routers send a deployment traffic once its
    status says Succeeded (discovery.rolled_out); from then on an edit must be an update that
    keeps the serving replicas until new ones are ready. The rollout manager makes it one only
    when the replicas it wants, 4, are ready — so the status must not say Succeeded on 2
    ready (instanceCount), or an edit in that moment stops the replicas taking traffic."""
    start, coordinator = started
    await coordinator.keep_publishing(3.0)  # 3 in flight + queued, 1 slot each, target 70 %: 4 (maxInstances)
    cluster.fate = fates.pending_forever  # the first pods keep downloading the model
    registry = await start()
    await eventually(lambda: replicas(apiserver) == 4 and len(cluster.pods()) == 4, timeout_s=10)
    assert status_of(apiserver, "onlinedeployments", "iris-blue").get("provisioningState") == "Creating"

    cluster.fate = fates.running_ready  # a crashed pod's replacement comes up ready
    first, second, *others = sorted(cluster.pods(), key=lambda p: p["metadata"]["name"])
    for pod, fate in [(first, fates.running_ready), (second, fates.running_ready),
                      *((p, fates.crashed_once()) for p in others)]:
        apiserver.update(fates.PODS, NS, pod["metadata"]["name"], lambda p, fate=fate: p.__setitem__("status", fate(p)))

    # The moment routers start sending traffic: the status says Succeeded, or the rollout
    # recorded a last good version (whichever the watch delivers first).
    cr = await eventually(lambda: (o := next(iter(apiserver.objects_of("onlinedeployments", NS)), None))
                          and rolled_out(o) and o, timeout_s=15, what="traffic to iris/blue")
    serving = {p["metadata"]["uid"] for p in cluster.pods() if pod_ready(p)}

    # The edit, at once: a new version whose pods never become ready.
    cluster.fate = fates.pending_forever
    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"environmentVariables": {"LOG_LEVEL": "x"}}})
    rollout = await eventually(lambda: (r := status_of(apiserver, "onlinedeployments", "iris-blue").get("rollout")
                                        or {}).get("spec_hash") not in (None, cr["status"]["specHash"]) and r,
                               timeout_s=10, what="the new version's rollout")
    # an update of the version taking traffic, not a "create" that replaces it at once
    assert rollout["kind"] == "update", f"traffic started with {len(serving)} of the 4 wanted replicas ready"
    await eventually(lambda: len(apiserver.objects_of("deployments", NS)) == 2, timeout_s=10)  # the surge version
    await after_passes(registry, 3)
    live = {p["metadata"]["uid"] for p in cluster.pods() if pod_ready(p) and not p["metadata"].get("deletionTimestamp")}
    assert serving <= live  # every replica that took traffic still serves
    assert len(serving) == 4
    await eventually(lambda: status_of(apiserver, "onlinedeployments", "iris-blue")["provisioningState"]
                     == "Updating", timeout_s=10)
