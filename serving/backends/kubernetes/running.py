"""`scoregate controller --backend kubernetes`: the composition root of the cluster controller.

Builds, in order: API client (in-cluster or --kubeconfig) → KubernetesStore (custom
resources) → SigningKeyKeeper (the aml_token signing key Secret, signing_key.py) →
KubernetesBackend (Deployments, Services, pods; placement from the store)
→ ClusterUtilization (the routers' summed load) → serving.controller's Autoscaling and
Controller (planner + reconcile loop) → DeploymentStatusReporter. The autoscaler's
verdicts reach the cluster the way every replica count does: the planner, the backend,
`spec.replicas` of the current version's Deployment (never a HorizontalPodAutoscaler).
With leader election (the default; the controller Deployment may run several replicas),
nothing is written before this process holds the Lease, and it stops when it loses it.
Shutdown runs in reverse order and leaves every replica running: the next leader adopts
them. serving/cli.py wires `add_arguments` and `settings_from_args` to the CLI verb.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily

from router import RoutingTableHolder

from ...backends import Artifacts
from ...controller.autoscaling import Autoscaling
from ...controller.loop import Controller
from ...controller.planner import wanted_count
from ...controller.preparing import StageFailed
from ...controller.publisher import RoutingPublisher
from ...controller.rollouts import RolloutManager
from .api import KubeApi, load_api_client
from .backend import KubernetesBackend
from .leasing import LeaseElector, run_elected, until_stopped
from .signing_key import SigningKeyKeeper
from .status import DeploymentStatusReporter
from .store import KubernetesStore
from .utilization import DEFAULT_MAX_AGE_S, ClusterUtilization
from .workloads import WorkloadSettings

log = logging.getLogger("scoregate.kubernetes")


@dataclass(frozen=True)
class KubernetesControllerSettings:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] | None = ("default",)  # None: all namespaces
    image: str = WorkloadSettings().image
    interval_s: float = 5.0
    leader_election: bool = True
    lease_namespace: str = "scoregate-system"
    lease_name: str = "scoregate-controller"
    identity: str = ""
    autoscaling: bool = True
    router_namespace: str | None = None  # where the routers' shares ConfigMap is; None: lease_namespace
    utilization_max_age_s: float = DEFAULT_MAX_AGE_S


class KubernetesPreparer:
    """The rollout's preparation on a cluster: only check the instance type exists.

    Model and code are fetched by each pod's init container, and the image by the
    kubelet, so their failures come back as replica failures (podstatus.py).
    """

    def __init__(self, store: KubernetesStore) -> None:
        self._store = store

    async def prepare(self, deployment, rollout, clock) -> Artifacts:
        if rollout is not None:
            rollout.enter("environment", clock())
        if deployment.instance_type not in {t.name for t in self._store.list_instance_types()}:
            raise StageFailed("environment", f"no instance type '{deployment.instance_type}'")
        return Artifacts()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    namespaces = parser.add_mutually_exclusive_group()  # both given: which one meant?
    namespaces.add_argument("--namespace", action="append", dest="namespaces", default=None,
                            help="namespace to watch (repeatable; default: default)")
    namespaces.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--image", default=WorkloadSettings().image, help="image of the model server and downloader")
    parser.add_argument("--no-leader-election", action="store_true", help="run without the Lease (one replica only)")
    parser.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "scoregate-system"))
    parser.add_argument("--router-namespace", default=None,
                        help="namespace of the routers' shares ConfigMap (autoscaling signal; default: --lease-namespace)")
    parser.add_argument("--utilization-max-age", type=float, default=DEFAULT_MAX_AGE_S,
                        help="seconds after which an unchanged shares ConfigMap counts as no load")
    parser.add_argument("--no-autoscaling", action="store_true",
                        help="ignore scale_settings.type target_utilization (replicas = instanceCount)")


def settings_from_args(args: argparse.Namespace) -> KubernetesControllerSettings:
    namespaces = None if args.all_namespaces else tuple(args.namespaces or ("default",))
    return KubernetesControllerSettings(kubeconfig=args.kubeconfig, context=args.context, namespaces=namespaces,
                                        image=args.image, leader_election=not args.no_leader_election,
                                        lease_namespace=args.lease_namespace, router_namespace=args.router_namespace,
                                        autoscaling=not args.no_autoscaling,
                                        utilization_max_age_s=args.utilization_max_age)


async def run_controller(settings: KubernetesControllerSettings, stop: asyncio.Event | None = None, *,
                         registry: CollectorRegistry | None = None) -> None:
    """Run until `stop` is set (or leadership is lost); then shut down in order.
    `registry` receives the autoscaler's metrics (decisions, desired replicas, utilization)
    and `scoregate_controller_reconcile_passes_total` (ReconcilePasses)."""
    stop = stop or asyncio.Event()
    api = KubeApi(await load_api_client(settings.kubeconfig, settings.context))
    try:
        await run_elected(api, enabled=settings.leader_election, namespace=settings.lease_namespace,
                          lease_name=settings.lease_name, identity=settings.identity, stop=stop,
                          body=lambda elector: _run_elected(api, settings, stop, elector,
                                                            registry or CollectorRegistry()),
                          name="lease campaign")
    finally:
        await api.close()


async def _run_elected(api: KubeApi, settings: KubernetesControllerSettings, stop: asyncio.Event,
                       elector: LeaseElector | None, registry: CollectorRegistry) -> None:
    store = KubernetesStore(api, namespaces=settings.namespaces)
    backend = KubernetesBackend(api, namespaces=settings.namespaces, placement=store,
                                settings=WorkloadSettings(image=settings.image))
    # a Service or Deployment name held by an object scoregate did not create: the store
    # refuses its OnlineDeployment until the name is free again (foreign.py)
    store.foreign = backend.foreign
    backend.foreign.on_change = store.refresh
    rollouts = RolloutManager(KubernetesPreparer(store), on_change=lambda: controller.notify())
    utilization, autoscaling = None, None
    if settings.autoscaling:
        utilization = ClusterUtilization(api, settings.router_namespace or settings.lease_namespace,
                                         max_age_s=settings.utilization_max_age_s)
        autoscaling = Autoscaling(utilization.sample, registry=registry, on_change=lambda: on_autoscale(),
                                  initial=lambda d: _continue_from(backend, store, d))
    controller = Controller(store, backend, RoutingPublisher(RoutingTableHolder()), rollouts,
                            autoscaling=autoscaling, interval_s=settings.interval_s)
    # Judges "Succeeded" against the count the rollouts judge against (the autoscaler's).
    reporter = DeploymentStatusReporter(api, store, backend.observe, wanted=controller.wanted,
                                        acted_on=controller.acted_on_instance_count)

    def on_autoscale() -> None:  # a new count: act on it, and show it (status.desiredReplicas)
        controller.notify()
        reporter.wake()

    def on_replica_change() -> None:
        controller.on_replica_change()
        reporter.wake()

    def on_store_change() -> None:
        controller.notify()
        reporter.wake()

    store.on_change, backend.on_change = on_store_change, on_replica_change
    await store.start()
    signing_key = SigningKeyKeeper(api, store.default_namespace)  # what aml_token endpoints need
    await signing_key.start()
    await backend.start()
    if utilization is not None:
        await utilization.start()
    await controller.start()
    if autoscaling is not None:
        await autoscaling.start()
    await reporter.start()
    log.info("controller running for %s", ", ".join(settings.namespaces) if settings.namespaces else "all namespaces")
    passes = ReconcilePasses(controller)
    registry.register(passes)
    try:
        await until_stopped(stop, elector)
    finally:
        registry.unregister(passes)
        await reporter.close()
        if autoscaling is not None:
            await autoscaling.close()
        await _bounded(controller.close(), "the reconcile loop")
        if utilization is not None:
            await utilization.close()
        await backend.close()
        await signing_key.close()
        await store.aclose()


class ReconcilePasses:
    """`scoregate_controller_reconcile_passes_total`: the reconcile passes this leader's loop
    has completed (Controller.passes, read when the registry is collected). A loop that is
    stuck stops counting; the tests wait on it to know the controller has looked at the
    cluster again since some moment (tests/kubernetes/test_controller.py, after_passes)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def collect(self):
        yield CounterMetricFamily("scoregate_controller_reconcile_passes",
                                  "Reconcile passes completed by the controller's loop.",
                                  value=self._controller.passes)


def _continue_from(backend: KubernetesBackend, store: KubernetesStore, deployment) -> int | None:
    """The count the last leader ran the deployment at (all versions; a rollout's surge
    replicas left out: planner.wanted_count): where a new leader's autoscaler continues
    from, rather than instanceCount, which would undo the last leader's decisions.
    None (use instanceCount) when nothing runs, or when the status says the last leader
    acted on another instanceCount (observedInstanceCount): the spec's was set since, an
    explicit scale like one made under a leader."""
    key = (deployment.endpoint_name, deployment.name)
    status = (store.snapshot.sources.get(key) or {}).get("status") or {}
    if status.get("observedInstanceCount", deployment.instance_count) != deployment.instance_count:
        return None
    return wanted_count([v for v in backend.observe() if (v.endpoint, v.deployment) == key]) or None


async def _bounded(closing, what: str, timeout_s: float = 3.0) -> None:
    """Await a close(), cancelling again if it hangs (on Python 3.11 asyncio.wait_for can
    swallow a cancellation, CPython gh-86296), so shutdown and the Lease hand-over never stall."""
    task = asyncio.ensure_future(closing)
    for _attempt in range(3):
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if done:
            return
        log.warning("%s did not stop within %.0f s; cancelling it again", what, timeout_s)
        task.cancel()  # also cancels what close() awaits
    await asyncio.gather(task, return_exceptions=True)
