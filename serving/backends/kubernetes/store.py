"""KubernetesStore: the Store protocol on custom resources, keys in Secrets.

Desired state is what `kubectl apply` put in the cluster: OnlineEndpoint and
OnlineDeployment objects in the watched namespaces, InstanceType objects (cluster-wide).
Watches (watching.py) mirror them; after every change a frozen snapshot is rebuilt in the
event loop — parsed and validated again (translation.py), conflicts resolved (the oldest
object wins a name) — so the Store's synchronous readers, called from worker threads by
the reconcile loop, read one consistent reference. Objects that cannot be served are kept
in `problems` with a reason, which status.py writes into their status.
An OnlineEndpoint or OnlineDeployment that was valid and then becomes invalid (an edit
the CRD schema cannot refuse: an unknown instance type, traffic that no longer adds up)
keeps its last valid version in the snapshot (`kept`), so the controller goes on serving
it unchanged while the problem is reported; a valid edit or the object's deletion (or a
new object under its name: another uid) ends that. The versions accepted (`last_valid`)
are recorded in each object's status (last_valid.py), so a controller that starts while
an object is invalid serves the same version.
An OnlineDeployment whose Service or Deployment name is taken by an object scoregate did
not create (found by the backend's writer, `foreign`: foreign.py) is refused the same
way, naming that object, until the name is free again.
Endpoint keys live in a Secret per endpoint (keys.py); an endpoint without its Secret yet
is not listed, so the router never sees an endpoint with empty keys. Writes (the management API) block on the
event loop and must come from a worker thread, as the Store protocol says.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ...resources import Deployment, Endpoint, with_instance_type
from ...store import DeploymentRecord, EndpointRecord, StoreError, check_no_traffic
from . import names
from .api import (DEPLOYMENTS, INSTANCE_TYPES, ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS, SECRETS, SERVICES, KubeApi,
                  replace_status_fields, status_of)
from .foreign import ForeignObjects
from .keys import SecretKeeper, signing_namespace
from .last_valid import LastValid, Version, key_of
from .podstatus import parse_time
from .translation import (DEFAULT_INSTANCE_TYPE, DEFAULT_INSTANCE_TYPE_NAME, CustomResourceError, InstanceTypeSpec,
                          deployment_from_custom_resource, deployment_to_custom_resource,
                          endpoint_from_custom_resource, endpoint_to_custom_resource,
                          instance_type_from_custom_resource, instance_type_to_custom_resource,
                          object_name_taken, same_deployment)
from .watching import ObjectCache, start_caches
from .workloads import Placement, owner_reference

log = logging.getLogger("scoregate.store.kubernetes")
ObjectId = tuple[str, str, str]  # kind, namespace, name


def _created(obj: dict) -> tuple[float, str, str]:
    """The oldest object keeps a contested name; the same order as the routers' (discovery.py)."""
    meta = obj.get("metadata") or {}
    return parse_time(meta.get("creationTimestamp")) or 0.0, meta.get("namespace", ""), meta.get("name", "")


def _id(obj: dict) -> ObjectId:
    meta = obj.get("metadata") or {}
    return obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


@dataclass(frozen=True)
class StoreSnapshot:
    records: tuple[EndpointRecord, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    placements: dict[tuple[str, str], Placement] = field(default_factory=dict)
    instance_types: dict[str, InstanceTypeSpec] = field(default_factory=dict)
    sources: dict[tuple[str, str], dict] = field(default_factory=dict)  # (endpoint, deployment) -> CR
    endpoint_sources: dict[str, dict] = field(default_factory=dict)
    problems: dict[ObjectId, str] = field(default_factory=dict)
    # every endpoint and deployment served, as accepted (for status.lastValid)
    last_valid: dict[ObjectId, Version] = field(default_factory=dict)

    @property
    def kept(self) -> dict[ObjectId, object]:
        """Invalid objects served in their last valid version: id -> that version (Endpoint
        or Deployment) — the served ones that have a problem."""
        return {oid: version.value for oid, version in self.last_valid.items() if oid in self.problems}


class KubernetesStore:
    def __init__(self, api: KubeApi, *, namespaces: Iterable[str] | None = ("default",),
                 on_change: Callable[[], None] = lambda: None, sync_timeout_s: float = 60.0) -> None:
        self._api = api
        self._namespaces = tuple(namespaces) if namespaces is not None else None
        self.default_namespace = signing_namespace(self._namespaces)
        self.on_change = on_change
        self._sync_timeout_s = sync_timeout_s
        wake = lambda _kind, _obj: self._rebuild()  # noqa: E731
        self._endpoints = ObjectCache(api, ONLINE_ENDPOINTS, namespaces=self._namespaces, on_event=wake)
        self._deployments = ObjectCache(api, ONLINE_DEPLOYMENTS, namespaces=self._namespaces, on_event=wake)
        self._instance_types = ObjectCache(api, INSTANCE_TYPES, on_event=wake)
        self._secrets = ObjectCache(api, SECRETS, namespaces=self._namespaces,
                                    label_selector=names.MANAGED_KEYS_SELECTOR, on_event=wake)
        self._caches = (self._instance_types, self._secrets, self._endpoints, self._deployments)
        self._keys = SecretKeeper(api, self._secrets, default_namespace=self.default_namespace,
                                  on_change=lambda: self._rebuild())
        self._snapshot = StoreSnapshot()
        self._endpoint_versions: LastValid[Endpoint] = LastValid("endpoint", Endpoint.from_dict)
        self._deployment_versions: LastValid[Deployment] = LastValid("deployment", Deployment.from_dict)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        # names taken by objects scoregate did not create (the backend's; set by running.py)
        self.foreign: ForeignObjects | None = None

    def refresh(self) -> None:
        """Rebuild the snapshot (ForeignObjects found a name taken, or free again)."""
        self._rebuild()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await start_caches(self._caches, self._sync_timeout_s)  # at once: one timeout for all
        self._started = True
        self._rebuild()

    async def aclose(self) -> None:
        await self._keys.close()
        for cache in self._caches:
            await cache.close()

    def close(self) -> None:
        """Store protocol: nothing to release synchronously (aclose() stops the watches)."""

    @property
    def snapshot(self) -> StoreSnapshot:
        return self._snapshot

    def custom_objects(self, kind) -> list[dict]:
        """The mirrored OnlineEndpoint or OnlineDeployment objects, valid or not."""
        cache = {ONLINE_ENDPOINTS: self._endpoints, ONLINE_DEPLOYMENTS: self._deployments}[kind]
        return cache.values()

    # -- the snapshot ---------------------------------------------------------------------
    def _rebuild(self) -> None:
        if not self._started:
            return
        problems: dict[ObjectId, str] = {}
        instance_types = {DEFAULT_INSTANCE_TYPE_NAME: DEFAULT_INSTANCE_TYPE}
        invalid_types: dict[str, str] = {}  # name: why it is refused
        for obj in self._instance_types.values():
            try:
                spec = instance_type_from_custom_resource(obj)
                instance_types[spec.name] = spec
            except CustomResourceError as exc:
                problems[_id(obj)] = invalid_types[obj["metadata"]["name"]] = str(exc)
                instance_types.pop(obj["metadata"]["name"], None)  # not the built-in default instead
        accepted_endpoints: dict[tuple[str, str], Version[Endpoint]] = {}
        endpoints: dict[str, tuple[Endpoint, dict]] = {}
        for obj in sorted(self._endpoints.values(), key=_created):
            oid = _id(obj)
            found = self._endpoint_versions.parse(obj, endpoint_from_custom_resource)
            if found.problem is not None:
                problems[oid] = str(found.problem)
            if found.version is None:
                continue
            endpoint = found.version.value
            if endpoint.name in endpoints:
                other = endpoints[endpoint.name][1]["metadata"]["namespace"]
                problems[oid] = str(CustomResourceError(
                    "OnlineEndpoint", oid[1], oid[2], "metadata.name",
                    f"the endpoint name {endpoint.name} is already used in namespace {other} (the older keeps it)"))
                continue
            endpoints[endpoint.name] = (endpoint, obj)
            accepted_endpoints[key_of(obj)] = found.version
        records = []
        self._keys.forget_keys_except({(obj["metadata"]["namespace"], name) for name, (_, obj) in endpoints.items()})
        for name, (endpoint, obj) in sorted(endpoints.items()):
            record = self._record(endpoint, obj)
            if record is not None:
                records.append(record)
        deployments, placements, sources = [], {}, {}
        accepted_deployments: dict[tuple[str, str], Version[Deployment]] = {}
        taken_names: dict[tuple[str, str], dict] = {}
        for obj in sorted(self._deployments.values(), key=_created):
            oid = _id(obj)
            found = self._deployment_versions.parse(
                obj, lambda o: self._resolve(o, endpoints, instance_types, invalid_types),
                # the last valid version, unchanged (its instance type's content included)
                usable=lambda d, o=obj: d.resolved_instance_type is not None and self._owned(o, d, endpoints),
                replaces=same_deployment)
            if found.problem is not None:
                problems[oid] = str(found.problem)
            if found.version is None:
                continue
            deployment = found.version.value
            key = (deployment.endpoint_name, deployment.name)
            if key in sources:
                holder = sources[key]["metadata"]
                field_path = "spec.deploymentName" if (obj.get("spec") or {}).get("deploymentName") else "metadata.name"
                problems[oid] = str(CustomResourceError(
                    "OnlineDeployment", oid[1], oid[2], field_path, f"endpoint {key[0]} already has a deployment"
                    f" {key[1]} (OnlineDeployment {holder['namespace']}/{holder['name']})"))
                continue
            # endpoint iris-ab's deployment cd and iris's ab-cd would share Service iris-ab-cd
            # and their Deployments: the older keeps the names
            object_name = (obj["metadata"]["namespace"], names.service_name(*key))
            if object_name in taken_names:
                problems[oid] = str(object_name_taken(obj, object_name[1], taken_names[object_name]))
                continue
            taken_names[object_name] = obj
            if (taken := self._taken_by_foreign(obj, deployment)) is not None:
                problems[oid] = taken
                continue
            deployments.append(deployment)
            placements[key] = Placement(obj["metadata"]["namespace"], deployment.resolved_instance_type,
                                        owner_reference(obj))
            sources[key] = obj
            accepted_deployments[key_of(obj)] = found.version
        if self.foreign is not None:
            self.foreign.retain({(o.get("metadata") or {}).get("uid") for o in self._deployments.values()})
        self._endpoint_versions.remember(accepted_endpoints)
        self._deployment_versions.remember(accepted_deployments)
        last_valid = {("OnlineEndpoint", *k): v for k, v in accepted_endpoints.items()}
        last_valid.update({("OnlineDeployment", *k): v for k, v in accepted_deployments.items()})
        self._snapshot = StoreSnapshot(tuple(records), tuple(deployments), placements, instance_types, sources,
                                       {name: obj for name, (_, obj) in endpoints.items()}, problems, last_valid)
        self.on_change()

    def _taken_by_foreign(self, obj: dict, deployment: Deployment) -> str | None:
        """Why `deployment` is refused when its Service or its version's Deployment has a
        name an object scoregate did not create holds (None: it is not)."""
        if self.foreign is None:
            return None
        namespace = obj["metadata"]["namespace"]
        service = names.service_name(deployment.endpoint_name, deployment.name)
        version = names.version_name(deployment.endpoint_name, deployment.name, deployment.replica_spec_hash())
        for kind, name in ((SERVICES, service), (DEPLOYMENTS, version)):
            if (error := self.foreign.reason(kind, namespace, name)) is not None:
                field_path = "spec.deploymentName" if (obj.get("spec") or {}).get("deploymentName") else "metadata.name"
                return str(CustomResourceError(
                    "OnlineDeployment", namespace, obj["metadata"]["name"], field_path,
                    f"its {kind.kind} would be named {name}, and {error}; scoregate does not take over objects"
                    f" it did not create: delete or rename that {kind.kind}, or rename this deployment"))
        return None

    @staticmethod
    def _owned(obj: dict, deployment: Deployment, endpoints: dict) -> bool:
        """Whether the deployment's endpoint is served, in the deployment's namespace."""
        owner = endpoints.get(deployment.endpoint_name)
        return owner is not None and owner[1]["metadata"]["namespace"] == obj["metadata"]["namespace"]

    def _resolve(self, obj: dict, endpoints: dict, instance_types: dict, invalid_types: dict) -> Deployment:
        """The deployment parsed, its endpoint and instance type checked, the type's content
        resolved: it is part of the version (editing the InstanceType rolls it)."""
        deployment = deployment_from_custom_resource(obj)
        self._check_place(obj, deployment, endpoints, instance_types, invalid_types)
        return with_instance_type(deployment, instance_types.values())

    def _check_place(self, obj: dict, deployment: Deployment, endpoints: dict, instance_types: dict,
                     invalid_types: dict) -> None:
        meta = obj["metadata"]
        owner = endpoints.get(deployment.endpoint_name)
        if owner is None or owner[1]["metadata"]["namespace"] != meta["namespace"]:
            exists = self._endpoints.get(meta["namespace"], deployment.endpoint_name) is not None
            why = "is not valid (see its status)" if exists else "does not exist"
            raise CustomResourceError(obj["kind"], meta["namespace"], meta["name"], "spec.endpointName",
                                      f"the OnlineEndpoint {deployment.endpoint_name} in namespace {meta['namespace']} {why}")
        spec = instance_types.get(deployment.instance_type)
        if spec is None:
            # an InstanceType has no status: the deployment says what is wrong with it
            why = invalid_types.get(deployment.instance_type)
            raise CustomResourceError(obj["kind"], meta["namespace"], meta["name"], "spec.instanceType",
                                      f"the InstanceType {deployment.instance_type} is not valid: {why}" if why
                                      else f"no InstanceType named {deployment.instance_type}")

    def _record(self, endpoint: Endpoint, obj: dict) -> EndpointRecord | None:
        namespace = obj["metadata"]["namespace"]
        # A keys Secret edited by hand into bytes that are not text: the keys last read (or
        # none), logged by the keeper; the endpoint and its deployments stay reconciled.
        keys = self._keys.readable_keys(namespace, endpoint.name)
        if keys is None and self._keys.unreadable(namespace, endpoint.name):
            keys = ("", "")  # there, unreadable: never replaced by a new one
        if keys is None:
            self._keys.ensure_keys_later(obj)
            return None
        created = parse_time(obj["metadata"].get("creationTimestamp")) or 0.0
        return EndpointRecord(endpoint, keys[0], keys[1], created, created)

    # -- PlacementResolver (for KubernetesBackend) ----------------------------------------
    def placement(self, deployment: Deployment) -> Placement:
        placement = self._snapshot.placements.get((deployment.endpoint_name, deployment.name))
        if placement is None:
            raise StoreError(f"deployment {deployment.endpoint_name}/{deployment.name} has no custom resource")
        return placement

    # -- Store protocol: reads ------------------------------------------------------------
    def list_endpoints(self) -> list[EndpointRecord]:
        return list(self._snapshot.records)

    def get_endpoint(self, name: str) -> EndpointRecord | None:
        return next((r for r in self._snapshot.records if r.endpoint.name == name), None)

    def list_deployments(self, endpoint_name: str | None = None) -> list[Deployment]:
        return [d for d in self._snapshot.deployments if endpoint_name in (None, d.endpoint_name)]

    def list_deployment_records(self) -> list[DeploymentRecord]:
        """Deployments with the rollout state kept in their status (`rollout`, `lastGood`) and
        the attempt asked for in their `scoregate.io/retry` annotation (docs/kubernetes.md)."""
        records = []
        for deployment in self._snapshot.deployments:
            source = self._snapshot.sources[(deployment.endpoint_name, deployment.name)]
            status = source.get("status") or {}
            good = status.get("lastGood")
            annotations = (source.get("metadata") or {}).get("annotations") or {}
            records.append(DeploymentRecord(deployment, Deployment.from_dict(good) if good else None,
                                            status.get("rollout"), str(annotations.get(names.ANNOTATION_RETRY, ""))))
        return records

    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None:
        return next((d for d in self._snapshot.deployments
                     if (d.endpoint_name, d.name) == (endpoint_name, name)), None)

    # -- Store protocol: writes (from a worker thread) ------------------------------------
    def _call(self, coro_fn, *args):
        if self._loop is None:
            raise StoreError("the Kubernetes store is not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("KubernetesStore writes block; call them through asyncio.to_thread")
        try:
            return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop).result(timeout=60)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"the Kubernetes API refused the change: {getattr(exc, 'body', None) or exc}") from exc

    def apply(self, endpoints: list[Endpoint], deployments: list[Deployment],
              instance_types: Iterable[InstanceTypeSpec] = (), retry: Iterable[tuple[str, str]] = ()) -> None:
        """`retry` is not written here: on a cluster the user asks for a new attempt with the
        OnlineDeployment's scoregate.io/retry annotation (docs/kubernetes.md)."""
        self._call(self.apply_async, endpoints, deployments, list(instance_types))

    def list_instance_types(self) -> list[InstanceTypeSpec]:
        return list(self._snapshot.instance_types.values())

    def delete_endpoint(self, name: str) -> bool:
        return self._call(self.delete_endpoint_async, name)

    def delete_deployment(self, endpoint_name: str, name: str) -> bool:
        return self._call(self.delete_deployment_async, endpoint_name, name)

    def set_instance_count(self, endpoint_name: str, name: str, count: int) -> Deployment:
        return self._call(self.set_instance_count_async, endpoint_name, name, count)

    def regenerate_key(self, endpoint_name: str, key_type: str) -> EndpointRecord:
        return self._call(self.regenerate_key_async, endpoint_name, key_type)

    def save_rollout(self, endpoint_name: str, name: str, rollout: dict,
                     last_good: Deployment | None = None) -> None:
        self._call(self.save_rollout_async, endpoint_name, name, rollout, last_good)

    def secret(self, name: str) -> str:
        """A random secret kept in Secret `scoregate-secrets` (created on first use)."""
        return self._call(self.secret_async, name)

    # -- the same, for async callers ------------------------------------------------------
    async def apply_async(self, endpoints: list[Endpoint], deployments: list[Deployment],
                          instance_types: Iterable[InstanceTypeSpec] = ()) -> None:
        for spec in instance_types:
            await self._upsert(INSTANCE_TYPES, instance_type_to_custom_resource(spec))
        for endpoint in endpoints:
            source = self._snapshot.endpoint_sources.get(endpoint.name)
            namespace = source["metadata"]["namespace"] if source else self.default_namespace
            await self._upsert(ONLINE_ENDPOINTS, endpoint_to_custom_resource(endpoint, namespace))
        for deployment in deployments:
            source = self._snapshot.sources.get((deployment.endpoint_name, deployment.name))
            endpoint_source = self._snapshot.endpoint_sources.get(deployment.endpoint_name)
            namespace = (source or endpoint_source or {}).get("metadata", {}).get("namespace", self.default_namespace)
            body = deployment_to_custom_resource(deployment, namespace)
            if source:
                body["metadata"]["name"] = source["metadata"]["name"]
            await self._upsert(ONLINE_DEPLOYMENTS, body)

    async def _upsert(self, kind, body: dict) -> None:
        namespace, name = body["metadata"].get("namespace"), body["metadata"]["name"]
        for _attempt in range(5):
            try:
                current = await self._api.get(kind, namespace, name)
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
                current = None
            try:
                if current is None:
                    await self._api.create(kind, namespace, body)
                else:
                    body["metadata"] = {**current["metadata"], "labels": current["metadata"].get("labels", {})}
                    await self._api.replace(kind, namespace, name, body)
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
        raise StoreError(f"{kind.kind} {namespace}/{name} kept changing while being updated")

    async def delete_endpoint_async(self, name: str) -> bool:
        source = self._snapshot.endpoint_sources.get(name)
        if source is None:
            return False
        namespace = source["metadata"]["namespace"]
        for obj in self._deployments.values():
            if obj["metadata"]["namespace"] == namespace and (obj.get("spec") or {}).get("endpointName") == name:
                await self._delete(ONLINE_DEPLOYMENTS, namespace, obj["metadata"]["name"])
        await self._delete(ONLINE_ENDPOINTS, namespace, source["metadata"]["name"])
        return True

    async def delete_deployment_async(self, endpoint_name: str, name: str) -> bool:
        source = self._snapshot.sources.get((endpoint_name, name))
        if source is None:
            return False
        endpoint = self.get_endpoint(endpoint_name)
        if endpoint is not None:
            check_no_traffic(endpoint.endpoint, name)
        await self._delete(ONLINE_DEPLOYMENTS, source["metadata"]["namespace"], source["metadata"]["name"])
        return True

    async def _delete(self, kind, namespace: str, name: str) -> None:
        try:
            await self._api.delete(kind, namespace, name)
        except Exception as exc:
            if status_of(exc) != 404:
                raise

    async def set_instance_count_async(self, endpoint_name: str, name: str, count: int) -> Deployment:
        source = self._snapshot.sources.get((endpoint_name, name))
        if source is None:
            raise StoreError(f"no deployment {name} in endpoint {endpoint_name}")
        updated = await self._api.patch(ONLINE_DEPLOYMENTS, source["metadata"]["namespace"],
                                        source["metadata"]["name"], {"spec": {"instanceCount": count}})
        # As every read gives it: with its instance type resolved (part of its version).
        return with_instance_type(deployment_from_custom_resource(updated), self._snapshot.instance_types.values())

    async def regenerate_key_async(self, endpoint_name: str, key_type: str) -> EndpointRecord:
        if key_type not in ("primary", "secondary"):
            raise StoreError("key type must be primary or secondary")
        source = self._snapshot.endpoint_sources.get(endpoint_name)
        if source is None:
            raise StoreError(f"no endpoint {endpoint_name}")
        await self._keys.regenerate(source["metadata"]["namespace"], endpoint_name, key_type)
        self._rebuild()
        record = self.get_endpoint(endpoint_name)
        if record is None:
            raise StoreError(f"no endpoint {endpoint_name}")
        return record

    async def save_rollout_async(self, endpoint_name: str, name: str, rollout: dict,
                                 last_good: Deployment | None = None) -> None:
        source = self._snapshot.sources.get((endpoint_name, name))
        if source is None:
            return
        # Each record replaces the one before it whole (a merge patch would keep, say, an
        # environment variable the new version dropped in its lastGood: a rollback after a
        # leader change would then go to a version that never ran).
        fields: dict = {"rollout": rollout}
        if last_good is not None:
            fields["lastGood"] = last_good.to_dict()
        await replace_status_fields(self._api, ONLINE_DEPLOYMENTS, source, fields)

    async def secret_async(self, name: str) -> str:
        return await self._keys.named_secret(name)


__all__ = ["InstanceTypeSpec", "KubernetesStore", "StoreSnapshot"]
