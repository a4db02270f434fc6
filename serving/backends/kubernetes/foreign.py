"""Objects scoregate did not create are never adopted: not changed, not deleted.

A deployment's Service and Deployments get fixed names (names.py); one of those names may
already be taken in the namespace by an object scoregate did not make — a user's own
Service, another tool's Deployment. As Helm and KServe do, the controller refuses to take
it over. An object is scoregate's own when it carries the marks scoregate puts on what it
creates (workloads.py):
- label `app.kubernetes.io/managed-by: scoregate`, and `scoregate.io/endpoint` /
  `scoregate.io/deployment` naming this very deployment;
- when the OnlineDeployment that should own it is known and the object has a controller
  ownerReference: that OnlineDeployment's uid (an object owned by another OnlineDeployment,
  or by an earlier one of the same name, is not this one's). One with the labels and no
  owner is scoregate's, orphaned: `kubectl delete --cascade=orphan` of its OnlineDeployment
  leaves it so, and the controller removes it.
Anything else is foreign: the writer (writing.py) raises ForeignObjectError instead of
writing, `ForeignObjects` remembers the name, the store refuses the OnlineDeployment with
the reason (its status says Failed), and the name is read again (GET, with back-off) until
the object is gone: then the store accepts the OnlineDeployment again and the next
reconcile creates scoregate's own object.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from . import names
from .api import DEPLOYMENTS, SERVICES, Backoff, KubeApi, Kind, status_of

log = logging.getLogger("scoregate.backend.kubernetes")
KINDS = {SERVICES.kind: SERVICES, DEPLOYMENTS.kind: DEPLOYMENTS}


def owner_of(manifest: dict | None) -> dict | None:
    """The controller ownerReference a rendered manifest carries (None: owner not known)."""
    for ref in ((manifest or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def why_foreign(obj: dict, endpoint: str, deployment: str, owner: dict | None) -> str | None:
    """Why `obj` is not scoregate's object of `deployment` of `endpoint` (owned by `owner`,
    an ownerReference, when known); None when it is."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(names.LABEL_MANAGED_BY) != names.MANAGER:
        return f"it has no label {names.LABEL_MANAGED_BY}={names.MANAGER}"
    if (labels.get(names.LABEL_ENDPOINT), labels.get(names.LABEL_DEPLOYMENT)) != (endpoint, deployment):
        return (f"its labels name deployment {labels.get(names.LABEL_DEPLOYMENT)} of endpoint"
                f" {labels.get(names.LABEL_ENDPOINT)}")
    holders = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    if owner is None or not holders or any(r.get("uid") == owner.get("uid") for r in holders):
        return None  # no owner at all: orphaned from its deleted OnlineDeployment (kubectl delete --cascade=orphan)
    return f"it belongs to {holders[0].get('kind')} {meta.get('namespace')}/{holders[0].get('name')}" + (
        " (an earlier object of that name)" if holders[0].get("name") == owner.get("name") else "")


class ForeignObjectError(Exception):
    """A Service or Deployment that scoregate would write exists and is not its own."""

    def __init__(self, kind: Kind, namespace: str, name: str, why: str, endpoint: str, deployment: str,
                 owner: dict | None) -> None:
        self.kind, self.namespace, self.name, self.why = kind, namespace, name, why
        self.endpoint, self.deployment, self.owner = endpoint, deployment, owner
        super().__init__(f"{kind.kind} {namespace}/{name} exists and is not managed by scoregate ({why})")


class ForeignObjects:
    """The names found taken by foreign objects, read again until they are free.

    `found()` (the writer) adds one; `reason()` (the store) says whether a name is taken;
    `retain()` (the store) forgets the names of OnlineDeployments that are gone. When a
    name becomes free (404, or the object is scoregate's own after all) `on_change` runs."""

    def __init__(self, api: KubeApi, *, on_change: Callable[[], None] = lambda: None,
                 backoff: Callable[[], Backoff] = lambda: Backoff(initial_s=0.5, maximum_s=15.0)) -> None:
        self._api = api
        self.on_change = on_change
        self._backoff = backoff
        self._found: dict[tuple[str, str, str], ForeignObjectError] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def found(self, error: ForeignObjectError) -> None:
        key = (error.kind.kind, error.namespace, error.name)
        known = self._found.get(key)
        self._found[key] = error
        if known is None or str(known) != str(error):
            log.warning("not taking over %s: delete or rename it", error)
            self.on_change()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="foreign objects")

    def reason(self, kind: Kind, namespace: str, name: str) -> ForeignObjectError | None:
        return self._found.get((kind.kind, namespace, name))

    def retain(self, owner_uids: set[str]) -> None:
        """Forget the names found for OnlineDeployments that no longer exist."""
        for key, error in list(self._found.items()):
            if error.owner is not None and error.owner.get("uid") not in owner_uids:
                del self._found[key]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        backoff = self._backoff()
        while True:
            if not self._found:
                await self._wake.wait()
                backoff = self._backoff()
            self._wake.clear()
            await asyncio.sleep(backoff.next_delay())
            freed = False
            for key, error in list(self._found.items()):
                try:
                    freed |= await self._check(key, error)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # read again later
                    log.debug("reading %s again failed: %s", key, exc)
            if freed:
                self.on_change()

    async def _check(self, key: tuple[str, str, str], error: ForeignObjectError) -> bool:
        try:
            obj = await self._api.get(error.kind, error.namespace, error.name)
        except Exception as exc:
            if status_of(exc) != 404:
                raise
            obj = None
        if obj is not None and why_foreign(obj, error.endpoint, error.deployment, error.owner) is not None:
            return False
        if self._found.get(key) is error:  # not found again meanwhile
            self._found.pop(key, None)
            log.info("%s %s/%s is gone: the name is free again", error.kind.kind, error.namespace, error.name)
            return True
        return False
