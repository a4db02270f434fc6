"""ClusterDiscovery: what a router on Kubernetes routes to, from watches only.

The router never asks the controller anything: it mirrors the same objects (watching.py)
and folds them into a `ClusterView` — endpoints with their keys, deployments, which of
them rolled out, and the ready replicas — which routing.py turns into a RoutingTable.
- OnlineEndpoint / OnlineDeployment: parsed and validated as the controller's store does
  (translation.py), the same name rules (the oldest object keeps a contested name), so
  router and controller agree on what exists. An endpoint is listed only once its keys
  Secret exists (keys.py), as in the store; the router never creates keys. An object that
  an edit made invalid is routed in its last valid version, as the store serves it, until
  a valid edit or its deletion: the one this router saw, else the one the controller
  recorded in its status (last_valid.py), so a router that starts meanwhile routes it too.
- A deployment gets traffic only when its status says a version served (`lastGood`, or
  `provisioningState: Succeeded`) — the publisher's "traffic in effect" rule.
- Replicas: EndpointSlices labelled `kubernetes.io/service-name` = the deployment's
  Service (names.py); an address whose `conditions.ready` is not false is a replica
  (unknown counts as ready, as the API documents), its port the one named `http`.
- aml_token: the signing secret from Secret `scoregate-secrets` (read-only, by name).
Events are coalesced: one rebuild per loop iteration, then `on_change()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ...controller.rollout import FAILED, unavailable_text
from ...resources import Deployment, Endpoint
from ...store import EndpointRecord
from ...tokens import TokenIssuer
from .. import READY, ReplicaView
from . import names
from .api import ENDPOINT_SLICES, ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, SECRETS, KubeApi
from .keys import NAMED_SECRETS, TOKEN_SIGNING_KEY, SecretKeeper, UnreadableSecret, secret_text, signing_namespace
from .last_valid import LastValid, Version, key_of
from .podstatus import parse_time
from .translation import deployment_from_custom_resource, endpoint_from_custom_resource, same_deployment
from .watching import ObjectCache, start_caches

log = logging.getLogger("scoregate.kubernetes.discovery")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Key = tuple[str, str]  # (endpoint, deployment)


@dataclass(frozen=True)
class ClusterView:
    records: tuple[EndpointRecord, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    available: frozenset[Key] = frozenset()  # deployments with a version that served
    replicas: tuple[ReplicaView, ...] = ()  # READY only
    # Deployments whose only version failed to roll out (their status says so): why.
    failed: Mapping[Key, str] = field(default_factory=dict)


def _age(obj: dict) -> tuple[float, str, str]:
    meta = obj.get("metadata") or {}
    return parse_time(meta.get("creationTimestamp")) or 0.0, meta.get("namespace", ""), meta.get("name", "")


def rolled_out(obj: dict) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("lastGood")) or status.get("provisioningState") == "Succeeded"


def rollout_failure(obj: dict) -> str | None:
    """Why a deployment that never rolled out failed, from its status; None otherwise."""
    status = obj.get("status") or {}
    saved = status.get("rollout")
    if rolled_out(obj) or not isinstance(saved, dict) or saved.get("state") != FAILED:
        return None
    return unavailable_text(saved.get("failed_stage"), saved.get("reason") or "no reason recorded")


def _paths(deployment: Deployment) -> tuple[str, str]:
    routes = deployment.environment.get("inference_config") or {}
    return ((routes.get("scoring_route") or {}).get("path") or "/score",
            (routes.get("liveness_route") or {}).get("path") or "/")


def slice_replicas(endpoint_slice: dict, deployment: Deployment) -> list[ReplicaView]:
    """The ready addresses of one EndpointSlice of a deployment's Service."""
    namespace = (endpoint_slice.get("metadata") or {}).get("namespace", "")
    ports = endpoint_slice.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
    if port is None and len(ports) == 1:
        port = ports[0].get("port")
    if not port:
        return []
    scoring_path, liveness_path = _paths(deployment)
    views = []
    for address in endpoint_slice.get("endpoints") or []:
        if (address.get("conditions") or {}).get("ready") is False or not address.get("addresses"):
            continue
        host = address["addresses"][0]
        ref = address.get("targetRef") or {}
        replica_id = f"{ref.get('namespace') or namespace}/{ref['name']}" if ref.get("name") else f"{namespace}/{host}"
        views.append(ReplicaView(replica_id=replica_id, endpoint=deployment.endpoint_name,
                                 deployment=deployment.name, spec_hash="", state=READY,
                                 host=f"[{host}]" if ":" in host else host, port=int(port), pid=None,
                                 started_at=0.0, scoring_path=scoring_path, liveness_path=liveness_path))
    return views


class ClusterDiscovery:
    def __init__(self, api: KubeApi, *, namespaces: Iterable[str] | None = ("default",),
                 on_change: Callable[[], None] = lambda: None, sync_timeout_s: float = 60.0) -> None:
        self._namespaces = tuple(namespaces) if namespaces is not None else None
        self.on_change = on_change
        self._sync_timeout_s = sync_timeout_s
        wake = lambda _kind, _obj: self._schedule()  # noqa: E731
        self._endpoints = ObjectCache(api, ONLINE_ENDPOINTS, namespaces=self._namespaces, on_event=wake)
        self._deployments = ObjectCache(api, ONLINE_DEPLOYMENTS, namespaces=self._namespaces, on_event=wake)
        self._keys_cache = ObjectCache(api, SECRETS, namespaces=self._namespaces,
                                       label_selector=names.MANAGED_KEYS_SELECTOR, on_event=wake)
        self._slices = ObjectCache(api, ENDPOINT_SLICES, namespaces=self._namespaces,
                                   label_selector=SERVICE_NAME_LABEL, on_event=wake)
        # The store keeps named secrets (the token signing key) in its first namespace.
        self._signing_namespace = signing_namespace(self._namespaces)
        self._signing = ObjectCache(api, SECRETS, namespaces=[self._signing_namespace],
                                    field_selector=f"metadata.name={NAMED_SECRETS}", on_event=wake)
        self._caches = (self._keys_cache, self._signing, self._endpoints, self._deployments, self._slices)
        self._keys = SecretKeeper(api, self._keys_cache, default_namespace=self._signing_namespace,
                                  on_change=lambda: None)  # read-only use: keys_of()
        self.view = ClusterView()
        self._endpoint_versions: LastValid[Endpoint] = LastValid("endpoint", Endpoint.from_dict)
        self._deployment_versions: LastValid[Deployment] = LastValid("deployment", Deployment.from_dict)
        self._tokens: TokenIssuer | None = None
        self._signing_encoded = ""
        self._scheduled = False
        self._started = False

    async def start(self) -> None:
        # all at once: one timeout for all, and the TimeoutError names every kind and namespace not listed
        await start_caches(self._caches, self._sync_timeout_s)
        self._started = True
        self.rebuild()

    async def close(self) -> None:
        self._started = False
        for cache in self._caches:
            await cache.close()

    def verify_token(self, endpoint: str, credential: bytes) -> bool:
        """The router's aml_token check; False until the signing secret exists."""
        return self._tokens is not None and self._tokens.verify(endpoint, credential)

    def _schedule(self) -> None:
        if self._started and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.rebuild)

    def rebuild(self) -> None:
        self._scheduled = False
        if not self._started:
            return
        endpoints: dict[str, tuple[Endpoint, str]] = {}  # name -> (endpoint, namespace)
        accepted_endpoints: dict[tuple[str, str], Version[Endpoint]] = {}
        for obj in sorted(self._endpoints.values(), key=_age):
            version = self._endpoint_versions.parse(obj, endpoint_from_custom_resource).version
            if version is None or version.value.name in endpoints:  # the oldest keeps a name
                continue
            endpoints[version.value.name] = (version.value, obj["metadata"]["namespace"])
            accepted_endpoints[key_of(obj)] = version
        self._endpoint_versions.remember(accepted_endpoints)
        records = []
        listed = {(namespace, name) for name, (_, namespace) in endpoints.items()}
        self._keys.forget_keys_except(listed)
        for name, (endpoint, namespace) in sorted(endpoints.items()):
            # content that is not text (a Secret edited by hand) is logged by the keeper and
            # the last readable keys stay, so one bad Secret never stops the rebuild
            keys = self._keys.readable_keys(namespace, name)
            if keys is not None:
                created = _age(self._endpoints.get(namespace, name) or {})[0]
                records.append(EndpointRecord(endpoint, keys[0], keys[1], created, created))
        deployments: dict[Key, tuple[Deployment, str]] = {}
        available = set()
        failed: dict[Key, str] = {}
        accepted_deployments: dict[tuple[str, str], Version[Deployment]] = {}
        services: set[tuple[str, str]] = set()
        for obj in sorted(self._deployments.values(), key=_age):
            namespace = obj["metadata"]["namespace"]

            def owned(d: Deployment, namespace=namespace) -> bool:
                owner = endpoints.get(d.endpoint_name)
                return owner is not None and owner[1] == namespace

            version = self._deployment_versions.parse(obj, deployment_from_custom_resource, usable=owned,
                                                      replaces=same_deployment).version
            if version is None or not owned(version.value):
                continue
            deployment = version.value
            key = (deployment.endpoint_name, deployment.name)
            service = (namespace, names.service_name(*key))
            if key in deployments or service in services:  # the older keeps the Service (store.py)
                continue
            deployments[key] = (deployment, namespace)
            services.add(service)
            accepted_deployments[key_of(obj)] = version
            if rolled_out(obj):
                available.add(key)
            elif (why := rollout_failure(obj)) is not None:
                failed[key] = why
        self._deployment_versions.remember(accepted_deployments)
        by_service = {(ns, names.service_name(*key)): d for key, (d, ns) in deployments.items()}
        replicas: dict[str, ReplicaView] = {}
        for endpoint_slice in self._slices.values():
            meta = endpoint_slice.get("metadata") or {}
            deployment = by_service.get((meta.get("namespace", ""), (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)))
            if deployment is not None:
                for view in slice_replicas(endpoint_slice, deployment):
                    replicas.setdefault(view.replica_id, view)  # a pod may be in two slices for a moment
        self.view = ClusterView(tuple(records), tuple(d for d, _ in deployments.values()), frozenset(available),
                                tuple(sorted(replicas.values(), key=lambda v: v.replica_id)), failed)
        self._tokens = self._signing_issuer()
        self.on_change()

    def _signing_issuer(self) -> TokenIssuer | None:
        secret = self._signing.get(self._signing_namespace, NAMED_SECRETS)
        encoded = ((secret or {}).get("data") or {}).get(TOKEN_SIGNING_KEY)
        if not encoded:
            self._signing_encoded = ""
            return None
        if self._signing_encoded == encoded:
            return self._tokens
        self._signing_encoded = encoded
        try:
            return TokenIssuer(secret_text(secret, TOKEN_SIGNING_KEY) or "")
        except UnreadableSecret as exc:  # e.g. --from-file of random bytes
            log.error("%s; aml_token endpoints refuse every token until it is text (e.g. kubectl create secret "
                      "generic %s --from-literal=%s=$(openssl rand -hex 32))", exc, NAMED_SECRETS, TOKEN_SIGNING_KEY)
            return None
