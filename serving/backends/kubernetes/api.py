"""The one door to the Kubernetes API: kubernetes-asyncio, raw JSON in and out.

Every call goes through the generated, typed API classes of kubernetes-asyncio (CoreV1Api,
AppsV1Api, CoordinationV1Api, CustomObjectsApi) with `_preload_content=False`, so objects
stay the API's own camelCase dicts: no model classes that drop unknown fields or refuse an
object missing a field, one shape for built-in and custom objects alike. Watches are read
line by line here too, so a 410 Gone reaches the caller (watching.py re-lists) instead of
being retried with the same stale resourceVersion. Errors are ApiException as usual.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
RETRYABLE_STATUSES = {0, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    singular: str  # as the generated method names spell it (endpoint_slice)
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Kind("", "v1", "pods", "pod", "Pod")
SERVICES = Kind("", "v1", "services", "service", "Service")
SECRETS = Kind("", "v1", "secrets", "secret", "Secret")
DEPLOYMENTS = Kind("apps", "v1", "deployments", "deployment", "Deployment")
LEASES = Kind("coordination.k8s.io", "v1", "leases", "lease", "Lease")
CONFIG_MAPS = Kind("", "v1", "configmaps", "config_map", "ConfigMap")
ENDPOINT_SLICES = Kind("discovery.k8s.io", "v1", "endpointslices", "endpoint_slice", "EndpointSlice")
ONLINE_ENDPOINTS = Kind("scoregate.io", "v1", "onlineendpoints", "onlineendpoint", "OnlineEndpoint")
ONLINE_DEPLOYMENTS = Kind("scoregate.io", "v1", "onlinedeployments", "onlinedeployment", "OnlineDeployment")
INSTANCE_TYPES = Kind("scoregate.io", "v1", "instancetypes", "instancetype", "InstanceType", namespaced=False)
BATCH_ENDPOINTS = Kind("scoregate.io", "v1", "batchendpoints", "batchendpoint", "BatchEndpoint")
BATCH_DEPLOYMENTS = Kind("scoregate.io", "v1", "batchdeployments", "batchdeployment", "BatchDeployment")

_TYPED = {"": client.CoreV1Api, "apps": client.AppsV1Api,
          "coordination.k8s.io": client.CoordinationV1Api, "discovery.k8s.io": client.DiscoveryV1Api}


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error; 0 for a connection failure; None otherwise."""
    if isinstance(exc, ApiException):
        return exc.status
    if isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError)):
        return 0
    return None


def api_message(exc: BaseException) -> str:
    """What the API server said, from the Status in an error's body (e.g. `Deployment.apps
    "x" is invalid: spec.template...`, an admission webhook's denial); else the HTTP reason."""
    body = getattr(exc, "body", None)
    try:
        message = (json.loads(body) or {}).get("message") if body else None
    except (ValueError, TypeError, AttributeError):
        message = None
    return str(message or getattr(exc, "reason", None) or exc)


def is_retryable(exc: BaseException) -> bool:
    return status_of(exc) in RETRYABLE_STATUSES


class Backoff:
    """Exponential back-off with jitter, bounded; reset() after a success."""

    def __init__(self, initial_s: float = 0.2, maximum_s: float = 30.0, factor: float = 2.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.initial_s, self.maximum_s, self.factor, self._rng = initial_s, maximum_s, factor, rng
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum_s, self.initial_s * self.factor ** self.failures)
        self.failures += 1
        return delay * (0.5 + self._rng() / 2)

    def reset(self) -> None:
        self.failures = 0


async def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In-cluster service account, or a kubeconfig file (--kubeconfig, $KUBECONFIG, ~/.kube/config)."""
    configuration = client.Configuration()
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        if kubeconfig is not None and not os.path.isfile(os.path.expanduser(kubeconfig)):
            # kubernetes-asyncio would say "Expected key current-context in kube-config"
            raise FileNotFoundError(f"no kubeconfig file {kubeconfig}")
        await config.load_kube_config(config_file=kubeconfig, context=context,
                                      client_configuration=configuration, persist_config=False)
    return client.ApiClient(configuration=configuration)


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def context_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace kubectl would use without `-n`: the kubeconfig context's (the current
    one, or `context`), the pod's own in a cluster, else "default"."""
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
                return handle.read().strip() or "default"
        except OSError:
            return "default"
    try:
        contexts, current = config.list_kube_config_contexts(kubeconfig)
    except Exception:  # no kubeconfig, or not one: load_api_client reports it properly
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return ((chosen or {}).get("context") or {}).get("namespace") or "default"


async def _decode(response: aiohttp.ClientResponse) -> Any:
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body.decode("utf-8", "replace")
        raise error
    return json.loads(body) if body else None


class KubeApi:
    """list / watch / get / create / replace / patch / delete of raw objects of any Kind."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self._typed = {group: cls(api_client) for group, cls in _TYPED.items()}
        self._custom = client.CustomObjectsApi(api_client)

    async def close(self) -> None:
        await self.api_client.close()

    def _method(self, kind: Kind, verb: str, namespace: str | None, name: str | None = None,
                subresource: str | None = None) -> tuple[Callable, dict]:
        params: dict[str, Any] = {}
        if name is not None:
            params["name"] = name
        all_namespaces = kind.namespaced and namespace is None
        if kind.namespaced and namespace is not None:
            params["namespace"] = namespace
        if kind.group in self._typed:
            if verb == "list" and all_namespaces:
                method = f"list_{kind.singular}_for_all_namespaces"
            else:
                verb = "read" if verb == "get" else verb
                method = f"{verb}_{'namespaced_' if kind.namespaced else ''}{kind.singular}"
                method += f"_{subresource}" if subresource else ""
            return getattr(self._typed[kind.group], method), params
        params.update(group=kind.group, version=kind.version)
        if verb == "list" and all_namespaces:
            params["resource_plural"] = kind.plural
            return self._custom.list_custom_object_for_all_namespaces, params
        params["plural"] = kind.plural
        method = f"{verb}_{'namespaced' if kind.namespaced else 'cluster'}_custom_object"
        method += f"_{subresource}" if subresource else ""
        return getattr(self._custom, method), params

    async def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None,
                   field_selector: str | None = None) -> tuple[list[dict], str]:
        """All objects and the list's resourceVersion (to watch from)."""
        method, params = self._method(kind, "list", namespace)
        if label_selector:
            params["label_selector"] = label_selector
        if field_selector:  # e.g. metadata.name=X: what RBAC's resourceNames allows to list and watch
            params["field_selector"] = field_selector
        body = await _decode(await method(**params, _preload_content=False))
        return body.get("items") or [], (body.get("metadata") or {}).get("resourceVersion", "")

    async def watch(self, kind: Kind, namespace: str | None, *, resource_version: str,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_s: int = 300) -> AsyncIterator[dict]:
        """Raw watch events ({type, object}) after `resource_version`, until the server ends it."""
        method, params = self._method(kind, "list", namespace)
        if label_selector:
            params["label_selector"] = label_selector
        if field_selector:
            params["field_selector"] = field_selector
        response = await method(**params, watch=True, resource_version=resource_version,
                                allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                                _preload_content=False,
                                _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_s + 30))
        try:
            if response.status != 200:
                await _decode(response)  # raises with the server's Status
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            response.release()

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict:
        method, params = self._method(kind, "get", namespace, name)
        return await _decode(await method(**params, _preload_content=False))

    async def create(self, kind: Kind, namespace: str | None, body: dict) -> dict:
        method, params = self._method(kind, "create", namespace)
        return await _decode(await method(**params, body=body, _preload_content=False))

    async def replace(self, kind: Kind, namespace: str | None, name: str, body: dict,
                      subresource: str | None = None) -> dict:
        """PUT: fails with 409 if body's metadata.resourceVersion is not the current one."""
        method, params = self._method(kind, "replace", namespace, name, subresource)
        return await _decode(await method(**params, body=body, _preload_content=False))

    async def patch(self, kind: Kind, namespace: str | None, name: str, patch: dict | list,
                    subresource: str | None = None, content_type: str = MERGE_PATCH) -> dict:
        """JSON merge patch (RFC 7386): maps merge, null deletes, lists are replaced; or, with
        `content_type` application/json-patch+json, a JSON patch (RFC 6902: a list of ops)."""
        method, params = self._method(kind, "patch", namespace, name, subresource)
        return await _decode(await method(**params, body=patch, _content_type=content_type,
                                          _preload_content=False))

    async def delete(self, kind: Kind, namespace: str | None, name: str, *,
                     propagation: str = "Background", uid: str | None = None) -> None:
        """Delete (dependents via the garbage collector); with `uid`, only that incarnation."""
        method, params = self._method(kind, "delete", namespace, name)
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        await _decode(await method(**params, body=body, _preload_content=False))

    async def read_log(self, namespace: str, pod: str, container: str, *, tail_lines: int = 100,
                       previous: bool = False) -> str:
        core = self._typed[""]
        response = await core.read_namespaced_pod_log(name=pod, namespace=namespace, container=container,
                                                      tail_lines=tail_lines, previous=previous,
                                                      _preload_content=False)
        try:
            body = await response.read()
        finally:
            response.release()
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason)
        return body.decode("utf-8", "replace")


async def patch_status(api: KubeApi, kind: Kind, obj: dict, status: dict) -> bool:
    """Write `status` to the object's status subresource unless every field already has
    that value. False when nothing was written (unchanged, or deleted meanwhile)."""
    previous = obj.get("status") or {}
    if all(previous.get(k) == v for k, v in status.items()):
        return False
    meta = obj["metadata"]
    try:
        await api.patch(kind, meta["namespace"], meta["name"], {"status": status}, subresource="status")
    except Exception as exc:
        if status_of(exc) != 404:
            raise
        return False
    return True


def without_nulls(value):
    """`value` without null members, at any depth: a CRD field that is not nullable may not
    hold null (an API server prunes it), so a record is written without them and read back
    with its defaults."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


async def replace_status_fields(api: KubeApi, kind: Kind, obj: dict, fields: dict) -> bool:
    """Make each of `fields` (a map of status field -> record) exactly that record, with a
    JSON patch (RFC 6902): a merge patch would merge a record into the one before it, and
    a key the new record lacks would stay. Nulls are left out (without_nulls). An object
    that has no status yet (as `obj` shows it) gets a merge patch: a JSON patch cannot add
    below a missing /status, and one adding /status whole would drop fields another writer
    just put there; with no record before, nothing can be merged into. False when the
    object is gone."""
    values = {name: without_nulls(value) for name, value in fields.items()}
    if obj.get("status"):
        body = [{"op": "add", "path": f"/status/{name}", "value": value} for name, value in values.items()]
        content_type = JSON_PATCH
    else:
        body, content_type = {"status": values}, MERGE_PATCH
    meta = obj["metadata"]
    try:
        await api.patch(kind, meta.get("namespace"), meta["name"], body, subresource="status",
                        content_type=content_type)
    except Exception as exc:
        if status_of(exc) != 404:
            raise
        return False
    return True
