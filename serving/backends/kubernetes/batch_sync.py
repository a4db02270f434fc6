"""BatchResources: BatchEndpoint / BatchDeployment custom resources → a BatchService.

What an Azure ML user expects of a batch endpoint on a cluster: `kubectl apply` the
endpoint and its deployment, see `kubectl get batchendpoints` say Succeeded, take the key
from Secret `scoregate-keys-ENDPOINT`, and submit jobs to `POST /api/v1/batch/ENDPOINT/jobs`
(docs/batch.md). The batch runner process (batch_running.py) owns a BatchService (jobs
in SQLite on its volume, worker processes in its pod); this module keeps that service's
endpoints, deployments and keys equal to the custom resources, and writes their status:
- every change (debounced) re-reads all of them: invalid objects, a deployment without
  its endpoint, a name already used in another namespace (the older object keeps it) or
  by an OnlineEndpoint in the same namespace (endpoint names are unique across online and
  batch, as serving/applying.py rules locally; the two would share Secret
  `scoregate-keys-NAME`, and the controller does not look at batch endpoints, so the
  batch one is refused whatever their ages), or code/model that cannot be fetched are
  Failed with the reason, naming the field;
- code and model URIs (file://, http(s)://, `#sha256=`) are fetched once per URI into
  the state dir (downloading.py, as the online pods' init container does); a local
  folder or plain file:// file is used in place;
- keys: the endpoint's Secret (created here, owned by the BatchEndpoint, like online
  endpoints' keys) is the truth; the service takes its keys, so rotating the Secret
  rotates them. Every accepted endpoint gets it at once, even while its default
  deployment is not valid (as in Azure ML, keys come with the endpoint); only an endpoint
  refused itself (its own fields, or a name taken) gets none;
- only an object that is gone is deleted from the service (cancelling that endpoint's
  jobs); an object that became invalid keeps its last good version serving, so a typo in
  an edit never throws accepted jobs away.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from ...batch.resources import BatchDeployment, BatchEndpoint
from ...batch.service import BatchService, BatchStoreError
from . import names
from .api import BATCH_DEPLOYMENTS, BATCH_ENDPOINTS, ONLINE_ENDPOINTS, SECRETS, KubeApi, patch_status
from .batch_translation import batch_deployment_from_custom_resource, batch_endpoint_from_custom_resource
from .downloading import FETCH_ERRORS, DownloadError, fetch
from .keys import SecretKeeper
from .podstatus import parse_time
from .translation import CustomResourceError
from .watching import ObjectCache, run_on_wake, start_caches

log = logging.getLogger("scoregate.kubernetes.batch")
ObjectId = tuple[str, str, str]  # kind, namespace, name


def _oid(obj: dict) -> ObjectId:
    meta = obj.get("metadata") or {}
    return obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


def _named(obj: dict) -> str:
    """How a status reason names the object: `BatchEndpoint team-a/iris-batch`."""
    kind, namespace, name = _oid(obj)
    return f"{kind} {namespace}/{name}"


def _created(obj: dict) -> tuple[float, str, str]:
    meta = obj.get("metadata") or {}
    return parse_time(meta.get("creationTimestamp")) or 0.0, meta.get("namespace", ""), meta.get("name", "")


class Artifacts:
    """Code and model URIs → local paths, fetched once per URI into `root`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def local(self, uri: str) -> str:
        plain = uri.removeprefix("file://")
        if uri.startswith("file://") and "#" not in uri and not plain.lower().endswith(
                (".tar.gz", ".tgz", ".tar", ".zip")):
            if not Path(plain).exists():
                raise DownloadError(f"{plain} does not exist")
            return plain
        folder = self.root / hashlib.sha256(uri.encode()).hexdigest()[:16]
        if not (folder / ".complete").exists():
            fetch(uri, folder / "content")
            (folder / ".complete").write_text(uri)
        return str(folder / "content")


class BatchResources:
    def __init__(self, api: KubeApi, service: BatchService, *, namespaces: Iterable[str] | None = ("default",),
                 artifacts_dir: Path, debounce_s: float = 0.1) -> None:
        self._api, self._service = api, service
        self._namespaces = tuple(namespaces) if namespaces is not None else None
        wake = lambda _kind, _obj: self.wake()  # noqa: E731
        self._endpoints = ObjectCache(api, BATCH_ENDPOINTS, namespaces=self._namespaces, on_event=wake)
        self._deployments = ObjectCache(api, BATCH_DEPLOYMENTS, namespaces=self._namespaces, on_event=wake)
        self._online = ObjectCache(api, ONLINE_ENDPOINTS, namespaces=self._namespaces, on_event=wake)
        self._secrets = ObjectCache(api, SECRETS, namespaces=self._namespaces,
                                    label_selector=names.MANAGED_KEYS_SELECTOR, on_event=wake)
        self._keys = SecretKeeper(api, self._secrets, default_namespace=(self._namespaces or ("default",))[0],
                                  on_change=self.wake)
        self._artifacts = Artifacts(artifacts_dir)
        self._debounce_s = debounce_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.problems: dict[ObjectId, str] = {}
        self.passes = 0

    async def start(self, timeout_s: float = 60.0) -> None:
        await start_caches((self._secrets, self._online, self._endpoints, self._deployments), timeout_s)
        await self.sync_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batch resources")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._keys.close()
        for cache in (self._deployments, self._endpoints, self._online, self._secrets):
            await cache.close()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        await run_on_wake(self._wake, self._debounce_s, self.sync_once, "syncing batch resources", log)

    # -- one pass --------------------------------------------------------------------------
    async def sync_once(self) -> None:
        problems: dict[ObjectId, str] = {}
        endpoints: dict[str, tuple[BatchEndpoint, dict]] = {}
        online = {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in self._online.values()}
        for obj in sorted(self._endpoints.values(), key=_created):
            try:
                endpoint = batch_endpoint_from_custom_resource(obj)
            except CustomResourceError as exc:
                problems[_oid(obj)] = str(exc)
                continue
            namespace = obj["metadata"]["namespace"]
            if (namespace, obj["metadata"]["name"]) in online:
                problems[_oid(obj)] = str(CustomResourceError(
                    obj["kind"], namespace, obj["metadata"]["name"], "metadata.name",
                    f"the name {endpoint.name} is already used by OnlineEndpoint {namespace}/{obj['metadata']['name']} "
                    f"(endpoint names are unique across online and batch endpoints)"))
                continue
            if endpoint.name in endpoints:
                other = endpoints[endpoint.name][1]["metadata"]["namespace"]
                problems[_oid(obj)] = str(CustomResourceError(
                    obj["kind"], namespace, obj["metadata"]["name"], "metadata.name",
                    f"the endpoint name {endpoint.name} is already used in namespace {other} (the older keeps it)"))
                continue
            endpoints[endpoint.name] = (endpoint, obj)
        deployments: dict[str, list[tuple[BatchDeployment, dict]]] = {}
        for obj in sorted(self._deployments.values(), key=_created):
            try:
                deployment = await self._deployment(obj, endpoints)
            except CustomResourceError as exc:
                problems[_oid(obj)] = str(exc)
                continue
            mine = deployments.setdefault(deployment.endpoint_name, [])
            if any(d.name == deployment.name for d, _ in mine):
                holder = next(o for d, o in mine if d.name == deployment.name)["metadata"]
                field_path = "spec.deploymentName" if (obj.get("spec") or {}).get("deploymentName") else "metadata.name"
                problems[_oid(obj)] = str(CustomResourceError(
                    obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], field_path,
                    f"endpoint {deployment.endpoint_name} already has a deployment {deployment.name}"
                    f" (BatchDeployment {holder['namespace']}/{holder['name']})"))
                continue
            mine.append((deployment, obj))

        keyed: set[ObjectId] = set()
        for name, (endpoint, obj) in endpoints.items():
            if not self._has_keys_secret(obj["metadata"]["namespace"], name):
                self._keys.ensure_keys_later(obj)  # with the endpoint, whatever its deployments say
            if await asyncio.to_thread(self._apply, endpoint, obj, deployments.get(name, []), problems):
                keyed.add(_oid(obj))
        await self._delete_gone()
        self.problems = problems
        await self._report(problems, keyed)
        self.passes += 1

    def _has_keys_secret(self, namespace: str, endpoint: str) -> bool:
        try:
            return self._keys.keys_of(namespace, endpoint) is not None
        except ValueError:
            return True  # there, unreadable: never replaced by a new one

    async def _deployment(self, obj: dict, endpoints: dict) -> BatchDeployment:
        source = batch_deployment_from_custom_resource(obj)
        deployment, meta = source.deployment, obj["metadata"]
        owner = endpoints.get(deployment.endpoint_name)
        if owner is None or owner[1]["metadata"]["namespace"] != meta["namespace"]:
            raise CustomResourceError(obj["kind"], meta["namespace"], meta["name"], "spec.endpointName",
                                      f"no valid BatchEndpoint {deployment.endpoint_name} in namespace {meta['namespace']}")
        code = await self._fetched(obj, source.code_uri, "spec.codeConfiguration.code")
        model = await self._fetched(obj, source.model_uri, "spec.model.path") if source.model_uri else None
        if not (Path(code) / deployment.scoring_script).is_file():
            raise CustomResourceError(obj["kind"], meta["namespace"], meta["name"],
                                      "spec.codeConfiguration.scoringScript",
                                      f"{deployment.scoring_script} is not a file in {source.code_uri}")
        return replace(deployment, code=code, model_path=model)

    async def _fetched(self, obj: dict, uri: str, field_path: str) -> str:
        """The local path of a code or model URI; what cannot be fetched or unpacked is the
        object's problem, naming the field (never an error that stops the whole pass)."""
        try:
            return await asyncio.to_thread(self._artifacts.local, uri)
        except FETCH_ERRORS as exc:
            meta = obj["metadata"]
            raise CustomResourceError(obj["kind"], meta["namespace"], meta["name"], field_path,
                                      f"cannot fetch {uri}: {exc}") from None

    def _apply(self, endpoint: BatchEndpoint, obj: dict, deployments: list[tuple[BatchDeployment, dict]],
               problems: dict[ObjectId, str]) -> bool:
        """One endpoint and its deployments, in one transaction (worker thread). True when
        its Secret was there to take the keys from: only then may the status say Succeeded
        (a Secret created during this pass is taken by the next, which its event wakes)."""
        ours = {d.name for d, _ in deployments}
        applied = endpoint
        if endpoint.default_deployment and endpoint.default_deployment not in ours:
            held = self._service.store.get_endpoint(endpoint.name)
            applied = replace(endpoint, default_deployment=held.endpoint.default_deployment if held and (
                held.endpoint.default_deployment in ours) else None)
            problems[_oid(obj)] = (f"{_named(obj)}: spec.defaults.deploymentName: no valid BatchDeployment "
                                   f"{endpoint.default_deployment} of this endpoint")
        try:
            self._service.apply([applied], [d for d, _ in deployments])
        except BatchStoreError as exc:
            problems[_oid(obj)] = str(exc)
            return False
        try:
            keys = self._keys.keys_of(obj["metadata"]["namespace"], endpoint.name)
        except ValueError as exc:  # edited by hand into bytes that are not text: fails this endpoint alone
            problems.setdefault(_oid(obj), (
                f"{_named(obj)}: Secret {names.keys_secret_name(endpoint.name)}: its keys cannot be read as text "
                f"({exc}); the keys in use are unchanged"))
            return True
        record = self._service.store.get_endpoint(endpoint.name)
        if keys is not None and not all(keys):  # someone emptied a key: not taken, and said
            problems.setdefault(_oid(obj), (
                f"{_named(obj)}: Secret {names.keys_secret_name(endpoint.name)} must hold both primaryKey "
                "and secondaryKey; the keys in use are unchanged"))
        elif keys is not None and record is not None and record.keys != keys:
            self._service.store.set_keys(endpoint.name, *keys)
        return keys is not None

    async def _delete_gone(self) -> None:
        """Delete from the service what has no custom resource any more (valid or not)."""
        named = {o["metadata"]["name"] for o in self._endpoints.values()}
        for record in await asyncio.to_thread(self._service.store.list_endpoints):
            if record.endpoint.name not in named:
                log.info("batch endpoint %s was deleted: cancelling its jobs", record.endpoint.name)
                await self._service.delete_endpoint(record.endpoint.name)
        kept = {(o.get("spec") or {}).get("endpointName", ""): set() for o in self._deployments.values()}
        for obj in self._deployments.values():
            spec = obj.get("spec") or {}
            kept[spec.get("endpointName", "")].add(spec.get("deploymentName", obj["metadata"]["name"]))
        for deployment in await asyncio.to_thread(self._service.store.list_deployments):
            if deployment.endpoint_name in named and deployment.name not in kept.get(deployment.endpoint_name, ()):
                try:
                    await asyncio.to_thread(self._service.delete_deployment, deployment.endpoint_name, deployment.name)
                except BatchStoreError as exc:  # still the endpoint's default: its status says why
                    log.warning("%s", exc)

    # -- status ----------------------------------------------------------------------------
    async def _report(self, problems: dict[ObjectId, str], keyed: set[ObjectId]) -> None:
        for obj in self._endpoints.values():
            problem = problems.get(_oid(obj))
            if problem:
                status = {"provisioningState": "Failed", "reason": problem}
            elif _oid(obj) not in keyed:
                status = {"provisioningState": "Creating", "reason": "creating the endpoint keys"}
            else:
                status = {"provisioningState": "Succeeded", "reason": ""}
            if _oid(obj) in keyed:  # as an OnlineEndpoint's status names its keys Secret
                status["keysSecretName"] = names.keys_secret_name(obj["metadata"]["name"])
            await self._patch(BATCH_ENDPOINTS, obj, status)
        for obj in self._deployments.values():
            problem = problems.get(_oid(obj))
            status = ({"provisioningState": "Failed", "reason": problem} if problem
                      else {"provisioningState": "Succeeded", "reason": ""})
            await self._patch(BATCH_DEPLOYMENTS, obj, status)

    async def _patch(self, kind, obj: dict, status: dict) -> None:
        status["observedGeneration"] = (obj.get("metadata") or {}).get("generation", 0)
        await patch_status(self._api, kind, obj, status)
