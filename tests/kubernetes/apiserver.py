"""ApiServerEmulator: kmock's KubernetesEmulator made to behave like a real API server.

kmock 0.8's emulator is an in-memory store behind Kubernetes URLs; on several points the
product relies on it differs from a real API server (see README.md here, "Emulator gaps").
This subclass closes them, as kmock's docs invite, by serving every request for a known
resource itself (at a priority just above kmock's own fallbacks, so a test can still
override any request with kmock's DSL), keeping kmock's `objects` view in step:

- a watch is `?watch=true` *or* `?watch=True` / `1`; it replays events after the given
  resourceVersion, answers an ERROR event with code 410 when that is older than the
  compacted history (`compact()`), ends after `timeoutSeconds`, filters by labelSelector;
- create answers 201 with uid, creationTimestamp, generation and a real resourceVersion;
- PUT replaces (409 Conflict on a stale resourceVersion), PATCH does JSON merge patch
  (strategic merge is treated as merge), JSON patch; both honour a resourceVersion
  precondition; lists carry kind, apiVersion and a resourceVersion;
- the status subresource: the main resource ignores status changes, /status only them;
- DELETE honours preconditions (uid, resourceVersion), finalizers, graceful deletion of
  scheduled pods (deletionTimestamp until `finish_termination`), and garbage-collects
  dependents by ownerReferences (background propagation) or orphans them;
- admission: custom resources are validated against their CRD's openAPIV3Schema
  (422 Invalid), names must be DNS subdomains.
Tests and the fake cluster (cluster.py) change objects in-process through the same
bookkeeping, so every change is a watch event with a new resourceVersion.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import jsonpatch
import jsonschema
import kmock
import yaml
from kmock._internal import apps, rendering

Res = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[Res, str, str]  # resource, namespace ("" if cluster-scoped), name
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass
class KindInfo:
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    schema: dict | None = None  # openAPIV3Schema, for admission


BUILTIN_KINDS: dict[Res, KindInfo] = {
    ("", "v1", "pods"): KindInfo("Pod"),
    ("", "v1", "services"): KindInfo("Service"),
    ("", "v1", "secrets"): KindInfo("Secret", status_subresource=False),
    ("", "v1", "configmaps"): KindInfo("ConfigMap", status_subresource=False),
    ("", "v1", "namespaces"): KindInfo("Namespace", namespaced=False),
    ("apps", "v1", "deployments"): KindInfo("Deployment"),
    ("apps", "v1", "replicasets"): KindInfo("ReplicaSet"),
    ("coordination.k8s.io", "v1", "leases"): KindInfo("Lease", status_subresource=False),
    ("discovery.k8s.io", "v1", "endpointslices"): KindInfo("EndpointSlice", status_subresource=False),
}


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches_selector(labels: dict, selector: str | None) -> bool:
    """Equality- and set-based label selectors, as the API server reads them."""
    if not selector:
        return True
    for term in re.split(r",(?![^(]*\))", selector):
        term = term.strip()
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            if (labels.get(m.group(1)) in values) != (m.group(2) == "in"):
                return False
        elif m := re.fullmatch(r"([\w./-]+)\s*(!=|==|=)\s*([\w.-]*)", term):
            equal = labels.get(m.group(1)) == m.group(3)
            if equal == (m.group(2) == "!="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(meta: dict, selector: str | None) -> bool:
    """Field selectors on metadata.name / metadata.namespace (= or ==, !=), as every kind supports."""
    if not selector:
        return True
    for term in selector.split(","):
        m = re.fullmatch(r"\s*(metadata\.name|metadata\.namespace)\s*(!=|==|=)\s*([\w.-]*)\s*", term)
        if m is None:
            raise status_error(400, "BadRequest", f'"{term}" is not a known field selector')
        if (meta.get(m.group(1).split(".")[1], "") == m.group(3)) == (m.group(2) == "!="):
            return False
    return True


def status_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details or {})


@dataclass
class Fault:
    method: str
    plural: str
    status: int
    remaining: int
    subresource: str | None = None
    hits: int = 0
    when: Callable[[Any], bool] | None = None  # only requests whose body this accepts
    reason: str | None = None  # the Status reason and message answered (e.g. an admission refusal)
    message: str | None = None


def _prune(value: Any, schema: dict) -> None:
    """Drop, in place, the fields a structural schema does not declare — what a real API
    server does to custom resources (unless `x-kubernetes-preserve-unknown-fields`), so a
    field the code writes but the CRD lacks is lost here as it would be on a cluster."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        declared, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key in list(value):
            if key in declared:
                _prune(value[key], declared[key])
            elif isinstance(extra, dict):
                _prune(value[key], extra)
            elif extra is not True:
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _prune(item, schema["items"])


class ApiServerEmulator(kmock.KubernetesEmulator):
    def __attrs_post_init__(self) -> None:
        kmock.KubernetesScaffold.__attrs_post_init__(self)  # discovery and 404s; our own object serving:
        (self.fallback ** 1)[lambda req: self._kind_of(req) is not None] << self._serve
        self.kinds: dict[Res, KindInfo] = dict(BUILTIN_KINDS)
        self.store: dict[ObjKey, dict] = {}
        self.rv = itertools.count(1001)
        self.current_rv = 1000
        self.history: list[tuple[int, Res, dict]] = []
        self.compacted_rv = 0
        self.changed = asyncio.Condition()
        self.watch_epoch = 0
        self.watch_gate = asyncio.Event()  # cleared by hold_watches(): open watches deliver nothing
        self.watch_gate.set()
        self.faults: list[Fault] = []
        self.listeners: list[Callable[[Res, str, dict], None]] = []
        self.pod_logs: dict[tuple[str, str, str], str] = {}

    async def _handle(self, request):  # skip KubernetesEmulator's own, merge-only bookkeeping
        return await apps.RawHandler._handle(self, request)

    # -- setup ----------------------------------------------------------------------------
    def install_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            self.kinds[(spec["group"], version["name"], spec["names"]["plural"])] = KindInfo(
                spec["names"]["kind"], spec["scope"] == "Namespaced",
                "status" in (version.get("subresources") or {}), version["schema"]["openAPIV3Schema"])

    def install_crds(self, paths) -> None:
        for path in paths:
            for doc in yaml.safe_load_all(open(path, encoding="utf-8")):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.install_crd(doc)

    @staticmethod
    def status_fields_written(body) -> set[str]:
        """The status fields a PATCH body writes, as a merge patch ({"status": {...}}) or a
        JSON patch (ops on /status/FIELD, or on /status whole) — for `fail_next(when=...)`."""
        if isinstance(body, dict):
            return set((body.get("status") or {}))
        fields: set[str] = set()
        for op in body if isinstance(body, list) else ():
            path = str(op.get("path", "")).split("/")
            if path[1:2] == ["status"]:
                fields |= {path[2]} if len(path) > 2 else set(op.get("value") or {})
        return fields

    def fail_next(self, method: str, plural: str, status: int, times: int = 1,
                  subresource: str | None = None, when: Callable[[Any], bool] | None = None,
                  reason: str | None = None, message: str | None = None) -> Fault:
        """The next `times` matching requests fail with `status` (e.g. 409, 500); `when`
        narrows them to requests whose body it accepts (one write among several alike);
        `reason` and `message` are the Status a real refusal carries (e.g. 422 Invalid, an
        admission webhook's denial)."""
        fault = Fault(method.upper(), plural, status, times, subresource, when=when, reason=reason,
                      message=message)
        self.faults.append(fault)
        return fault

    # -- in-process access (tests, fake controllers) --------------------------------------
    def objects_of(self, plural: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        return [copy.deepcopy(obj) for (res, ns, _), obj in sorted(self.store.items())
                if res[2] == plural and (namespace is None or ns == namespace)
                and matches_selector((obj["metadata"].get("labels") or {}), selector)]

    def get(self, res: Res, namespace: str, name: str) -> dict | None:
        obj = self.store.get((res, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    def create(self, res: Res, obj: dict) -> dict:
        return self._create(res, obj.get("metadata", {}).get("namespace", ""), copy.deepcopy(obj))

    def update(self, res: Res, namespace: str, name: str, mutate: Callable[[dict], None]) -> dict | None:
        key = (res, namespace or "", name)
        if key not in self.store:
            return None
        obj = copy.deepcopy(self.store[key])
        mutate(obj)
        if obj == self.store[key]:
            return obj
        return self._commit(key, obj, "MODIFIED")

    def delete(self, res: Res, namespace: str, name: str, *, force: bool = False) -> None:
        key = (res, namespace or "", name)
        if key in self.store:
            self._delete(key, "Background", force=force)

    def finish_termination(self, res: Res, namespace: str, name: str) -> None:
        """The kubelet's part: a gracefully deleted pod is gone."""
        self.delete(res, namespace, name, force=True)

    def compact(self) -> None:
        """Forget all history: watches from an older resourceVersion now get 410 Gone."""
        self.compacted_rv = self.current_rv
        self.history.clear()

    def hold_watches(self) -> None:
        """Open watches deliver no event until `release_watches()`: a watch stream that lags
        behind the answers to writes (a busy API server, a slow network), so a write's
        answer reaches the client before events committed earlier."""
        self.watch_gate.clear()

    def release_watches(self) -> None:
        self.watch_gate.set()

    async def drop_watches(self) -> None:
        """End every open watch, as an API server restart or a load balancer would."""
        self.watch_gate.set()
        async with self.changed:
            self.watch_epoch += 1
            self.changed.notify_all()

    # -- bookkeeping ----------------------------------------------------------------------
    def _next_rv(self) -> str:
        self.current_rv = next(self.rv)
        return str(self.current_rv)

    def _commit(self, key: ObjKey, obj: dict, event: str) -> dict:
        obj["metadata"]["resourceVersion"] = self._next_rv()
        res = key[0]
        if event == "DELETED":
            self.store.pop(key, None)
            self.objects[self._kmock_key(key)].delete()
        else:
            self.store[key] = obj
            kkey = self._kmock_key(key)
            if kkey in self.objects and not self.objects[kkey].deleted:
                self.objects[kkey].history.append(copy.deepcopy(obj))
            elif kkey in self.objects:
                self.objects[kkey].create(copy.deepcopy(obj))
            else:
                self.objects[kkey] = copy.deepcopy(obj)
        self.history.append((self.current_rv, res, {"type": event, "object": copy.deepcopy(obj)}))
        for listener in list(self.listeners):
            listener(res, event, obj)
        asyncio.get_running_loop().create_task(self._notify())
        return copy.deepcopy(obj)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    @staticmethod
    def _kmock_key(key: ObjKey):
        (group, version, plural), namespace, name = key
        return kmock.resource(group=group, version=version, plural=plural), namespace or None, name

    def _admit(self, res: Res, obj: dict) -> None:
        info = self.kinds[res]
        name = obj["metadata"].get("name", "")
        if not _NAME.match(name):
            raise status_error(422, "Invalid", f'{info.kind} "{name}" is invalid: metadata.name: must be a DNS subdomain')
        if info.schema is not None:
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            schema = {k: v for k, v in info.schema.items() if k != "properties"}
            schema["properties"] = {k: v for k, v in info.schema.get("properties", {}).items()
                                    if k not in ("apiVersion", "kind", "metadata")}
            errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
            if errors:
                where = ".".join(str(p) for p in errors[0].path)
                raise status_error(422, "Invalid", f'{info.kind}.{res[0]} "{name}" is invalid: {where}: '
                                                   f"{errors[0].message}", name=name, kind=info.kind)
            for field_name in list(body):  # what the schema does not declare is dropped, as a real server does
                if field_name in schema["properties"]:
                    _prune(obj[field_name], schema["properties"][field_name])
                else:
                    del obj[field_name]

    def _create(self, res: Res, namespace: str, obj: dict) -> dict:
        info = self.kinds[res]
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if info.namespaced:
            if meta.get("namespace") not in (None, namespace):
                raise status_error(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
        self._admit(res, obj)
        key = (res, namespace if info.namespaced else "", meta["name"])
        if key in self.store:
            raise status_error(409, "AlreadyExists", f'{info.kind} "{meta["name"]}" already exists',
                               name=meta["name"], kind=info.kind)
        obj["apiVersion"] = f"{res[0]}/{res[1]}" if res[0] else res[1]
        obj["kind"] = info.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        meta.pop("deletionTimestamp", None)
        if info.status_subresource:
            obj.pop("status", None)
        return self._commit(key, obj, "ADDED")

    def _check_rv(self, current: dict, given: str | None) -> None:
        if given and given != current["metadata"]["resourceVersion"]:
            raise status_error(409, "Conflict", f'Operation cannot be fulfilled on {current["kind"]} '
                               f'"{current["metadata"]["name"]}": the object has been modified; please apply '
                               "your changes to the latest version and try again")

    def _update(self, key: ObjKey, new: dict, subresource: str | None) -> dict:
        current = self.store[key]
        info = self.kinds[key[0]]
        if subresource == "status":
            result = copy.deepcopy(current)
            result["status"] = new.get("status")
            self._admit(key[0], result)  # status is validated and pruned too
        else:
            result = copy.deepcopy(new)
            result["metadata"] = {**new.get("metadata", {}),
                                  **{k: current["metadata"][k] for k in ("uid", "creationTimestamp", "namespace",
                                                                         "name", "generation", "deletionTimestamp")
                                     if k in current["metadata"]}}
            result["apiVersion"], result["kind"] = current["apiVersion"], current["kind"]
            if info.status_subresource:
                result.pop("status", None)
                if "status" in current:
                    result["status"] = current["status"]
            if result.get("spec") != current.get("spec"):
                result["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            self._admit(key[0], result)
        meta = result["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(key, result, "DELETED")
            self._collect_dependents(result, "Background")
            return result
        return self._commit(key, result, "MODIFIED")

    def _delete(self, key: ObjKey, propagation: str, *, force: bool = False, grace: int | None = None) -> dict:
        obj = copy.deepcopy(self.store[key])
        meta = obj["metadata"]
        graceful = key[0] == ("", "v1", "pods") and (obj.get("spec") or {}).get("nodeName") and grace != 0
        if meta.get("finalizers") or (graceful and not force):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 30 if grace is None else grace
                return self._commit(key, obj, "MODIFIED")
            return obj
        self._commit(key, obj, "DELETED")
        self._collect_dependents(obj, propagation)
        return obj

    def _collect_dependents(self, owner: dict, propagation: str) -> None:
        """The garbage collector: dependents of a deleted owner go too (or lose the reference)."""
        uid = owner["metadata"]["uid"]
        for key, obj in list(self.store.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == uid for ref in refs) or key not in self.store:
                continue
            if propagation == "Orphan":
                self.update(key[0], key[1], key[2], lambda o: o["metadata"].__setitem__(
                    "ownerReferences", [r for r in refs if r.get("uid") != uid]))
            else:
                self._delete(key, "Background")

    # -- serving --------------------------------------------------------------------------
    def _kind_of(self, request) -> Res | None:
        resource = request.resource
        if resource is None or not resource.plural or request.method is None:
            return None
        res = (resource.group or "", resource.version or "", resource.plural)
        return res if res in getattr(self, "kinds", {}) else None

    def _take_fault(self, request, res: Res) -> Fault | None:
        for fault in self.faults:
            if (fault.remaining > 0 and fault.method == request.method.value and fault.plural == res[2]
                    and fault.subresource == request.subresource
                    and (fault.when is None or fault.when(request.data))):
                fault.remaining -= 1
                fault.hits += 1
                return fault
        return None

    async def _serve(self, request):
        # kmock keeps the status of the last Response a reaction returned on the reaction
        # itself, so every answer states its own status.
        status, payload = 200, self._answer(request)
        if isinstance(payload, rendering.Response):
            status, payload = payload.status, payload.payload
        return rendering.Response(status=status, payload=payload)

    def _answer(self, request):
        res = self._kind_of(request)
        info = self.kinds[res]
        fault = self._take_fault(request, res)
        if fault is not None:
            raise status_error(fault.status, fault.reason or {409: "Conflict", 410: "Gone", 429: "TooManyRequests"}.get(
                fault.status, "InternalError"), fault.message or f"injected failure {fault.status}")
        namespace = request.namespace or ""
        method, name, params = request.method.value, request.name, request.params
        if name is None:
            if method == "GET" and params.get("watch") in ("true", "True", "1"):
                return self._watch(res, request.namespace, params)
            if method == "GET":
                return self._list(res, request.namespace, params)
            if method == "POST":
                return rendering.Response(status=201, payload=self._create(res, namespace, copy.deepcopy(request.data)))
            raise status_error(405, "MethodNotAllowed", f"{method} on a collection")
        key = (res, namespace if info.namespaced else "", name)
        if method == "GET" and request.subresource == "log":
            if key not in self.store:
                raise status_error(404, "NotFound", f'pods "{name}" not found')
            return self.pod_logs.get((namespace, name, params.get("container", "")), "").encode()
        if method == "POST" and key in self.store:
            raise status_error(409, "AlreadyExists", f'{info.kind} "{name}" already exists')
        if key not in self.store:
            raise status_error(404, "NotFound", f'{info.kind.lower()}s "{name}" not found', name=name, kind=info.kind)
        current = self.store[key]
        if method == "GET":
            return copy.deepcopy(current)
        if method == "PUT":
            body = copy.deepcopy(request.data)
            self._check_rv(current, (body.get("metadata") or {}).get("resourceVersion"))
            return self._update(key, body, request.subresource)
        if method == "PATCH":
            content_type = request.headers.get("Content-Type", "")
            patch = copy.deepcopy(request.data)
            if "json-patch" in content_type:
                new = jsonpatch.apply_patch(current, patch)
            else:  # merge patch; a strategic merge patch is read as a merge patch (README: gaps)
                self._check_rv(current, ((patch or {}).get("metadata") or {}).get("resourceVersion"))
                new = merge_patch(current, patch)
            return self._update(key, new, request.subresource)
        if method == "DELETE":
            options = request.data if isinstance(request.data, dict) else {}
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
                raise status_error(409, "Conflict", "Precondition failed: UID in precondition does not match")
            self._check_rv(current, pre.get("resourceVersion"))
            grace = options.get("gracePeriodSeconds", params.get("gracePeriodSeconds"))
            return self._delete(key, options.get("propagationPolicy") or "Background",
                                grace=int(grace) if grace is not None else None)
        raise status_error(405, "MethodNotAllowed", method)

    def _visible(self, res: Res, namespace: str | None, selector: str | None, fields: str | None = None):
        for (r, ns, _), obj in sorted(self.store.items()):
            if r == res and (namespace is None or ns == namespace) and \
                    matches_selector(obj["metadata"].get("labels") or {}, selector) and \
                    matches_fields(obj["metadata"], fields):
                yield obj

    def _list(self, res: Res, namespace: str | None, params: dict) -> dict:
        info = self.kinds[res]
        return {"apiVersion": f"{res[0]}/{res[1]}" if res[0] else res[1], "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self.current_rv)},
                "items": [copy.deepcopy(o) for o in self._visible(res, namespace, params.get("labelSelector"),
                                                                  params.get("fieldSelector"))]}

    async def _watch(self, res: Res, namespace: str | None, params: dict):
        selector, fields = params.get("labelSelector"), params.get("fieldSelector")
        since = params.get("resourceVersion") or "0"
        timeout = float(params.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        epoch = self.watch_epoch

        def line(event: dict) -> bytes:
            return json.dumps(event).encode() + b"\n"

        yield b""
        if since == "0":
            position = self.current_rv
            for obj in list(self._visible(res, namespace, selector, fields)):
                yield line({"type": "ADDED", "object": copy.deepcopy(obj)})
        elif int(since) < self.compacted_rv:
            yield line({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
                "reason": "Expired", "message": f"too old resource version: {since} ({self.compacted_rv})"}})
            return
        else:
            position = int(since)
        while True:
            await self.watch_gate.wait()
            top = self.current_rv
            pending = [event for rv, r, event in self.history if position < rv <= top and r == res]
            position = top
            for event in pending:
                meta = event["object"]["metadata"]
                if (namespace is None or meta.get("namespace") == namespace) and \
                        matches_selector(meta.get("labels") or {}, selector) and matches_fields(meta, fields):
                    yield line(event)
            if epoch != self.watch_epoch:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            async with self.changed:
                if self.current_rv <= position and epoch == self.watch_epoch:
                    try:
                        await asyncio.wait_for(self.changed.wait(), remaining)
                    except asyncio.TimeoutError:
                        return
