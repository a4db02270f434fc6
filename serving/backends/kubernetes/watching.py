"""ObjectCache: a list-then-watch mirror of one Kind, in some namespaces or all.

The classic reflector: list (which gives a resourceVersion), then watch from that
resourceVersion; every event updates the mirror and calls `on_event`. A watch that ends
(server timeout) resumes from the last resourceVersion seen (bookmarks included); a 410
Gone — the server no longer has history that old — means events were missed, so the cache
re-lists and reports the difference as events; any other error backs off (bounded,
jittered) before trying again. The cache never writes; backend.py and store.py read it.

Newer wins. A writer puts the object its write returned (`put`) before the watch brings
its event, so an event queued before that write (an older version: someone else's change,
or the deletion of an earlier object of the name) can arrive after it; taking it would
show the older object until the write's own event comes. An event or a listed object is
therefore not taken when it is older than the one held for its name. Kubernetes calls
resourceVersions opaque; an API server's are etcd revisions, integers that grow with
every write to a resource, and one cache holds one resource, so they are compared only
when both parse as integers (never otherwise: then the newest to arrive wins, as before).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable

from .api import Backoff, KubeApi, Kind, status_of

log = logging.getLogger("scoregate.kubernetes.watch")

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
Key = tuple[str, str]  # (namespace or "", name)


def key_of(obj: dict) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name", "")


class WatchGone(Exception):
    """The server answered 410 Gone: the resourceVersion is too old; re-list."""


class ObjectCache:
    def __init__(self, api: KubeApi, kind: Kind, *, namespaces: Iterable[str] | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 on_event: Callable[[str, dict], None] = lambda _type, _obj: None,
                 watch_timeout_s: int = 300, backoff: Callable[[], Backoff] = Backoff) -> None:
        self.kind = kind
        self._api = api
        self._scopes: list[str | None] = list(namespaces) if namespaces and kind.namespaced else [None]
        self._selector = label_selector
        self._field_selector = field_selector
        self._on_event = on_event
        self._watch_timeout_s = watch_timeout_s
        self._backoff = backoff
        self._objects: dict[Key, dict] = {}
        self._tasks: list[asyncio.Task] = []
        self._synced = [asyncio.Event() for _ in self._scopes]
        self.relists = 0  # how often a scope had to re-list (410 Gone, errors); for tests and metrics

    # -- reading --------------------------------------------------------------------------
    def get(self, namespace: str | None, name: str) -> dict | None:
        return self._objects.get((namespace or "", name))

    def values(self) -> list[dict]:
        return list(self._objects.values())

    @property
    def synced(self) -> bool:
        return all(event.is_set() for event in self._synced)

    # -- write-through --------------------------------------------------------------------
    def put(self, obj: dict) -> None:
        """Remember the object a write returned, before its watch event arrives (unless
        the watch brought a newer version meanwhile)."""
        if not _older(obj, self._objects.get(key_of(obj))):
            self._objects[key_of(obj)] = obj

    def discard(self, namespace: str | None, name: str) -> None:
        self._objects.pop((namespace or "", name), None)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, timeout_s: float | None = None) -> None:
        """Start watching; return once every scope has listed (or raise on timeout)."""
        await start_caches([self], timeout_s)

    def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(i, scope), name=f"watch {self.kind.plural} {scope or '*'}")
                       for i, scope in enumerate(self._scopes)]

    def _unlisted(self) -> str | None:
        """"KIND in NS, NS" for the scopes that have not listed yet; None when all have."""
        unlisted = [scope or "all namespaces" for scope, synced in zip(self._scopes, self._synced)
                    if not synced.is_set()]
        return f"{self.kind.plural} in {', '.join(unlisted)}" if unlisted else None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- the reflector --------------------------------------------------------------------
    async def _run(self, index: int, namespace: str | None) -> None:
        backoff = self._backoff()
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._relist(namespace)
                    self._synced[index].set()
                resource_version = await self._watch(namespace, resource_version)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except WatchGone:
                log.info("watch of %s in %s: resourceVersion too old, re-listing", self.kind.plural,
                         namespace or "all namespaces")
                resource_version = None
            except Exception as exc:  # back off, then list again: events may have been missed
                status = status_of(exc)
                if status == 410:
                    resource_version = None
                    continue
                delay = backoff.next_delay()
                log.warning("watch of %s in %s failed (%s); retrying in %.1f s", self.kind.plural,
                            namespace or "all namespaces", exc if status is None else f"HTTP {status}", delay)
                resource_version = None
                await asyncio.sleep(delay)

    async def _relist(self, namespace: str | None) -> str:
        items, resource_version = await self._api.list(self.kind, namespace, self._selector, self._field_selector)
        self.relists += 1
        fresh = {key_of(obj): obj for obj in items}
        listed_at = {"metadata": {"resourceVersion": resource_version}}
        in_scope = [k for k in self._objects if namespace is None or k[0] == namespace]
        for key in in_scope:
            if key not in fresh and not _older(listed_at, self._objects[key]):  # else written after the list
                self._emit(DELETED, self._objects.pop(key))
        for key, obj in fresh.items():
            old = self._objects.get(key)
            if _older(obj, old):  # a write put after the list was made: its event follows
                continue
            self._objects[key] = obj
            if old is None:
                self._emit(ADDED, obj)
            elif old != obj:
                self._emit(MODIFIED, obj)
        return resource_version

    async def _watch(self, namespace: str | None, resource_version: str) -> str:
        async for event in self._api.watch(self.kind, namespace, resource_version=resource_version,
                                           label_selector=self._selector, field_selector=self._field_selector,
                                           timeout_s=self._watch_timeout_s):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise WatchGone()
                raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
            resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
            if kind == "BOOKMARK" or _older(obj, self._objects.get(key_of(obj))):
                continue  # older than what a write put here: its own event is still to come
            if kind == DELETED:
                self._objects.pop(key_of(obj), None)
            else:
                self._objects[key_of(obj)] = obj
            self._emit(kind, obj)
        return resource_version

    def _emit(self, kind: str, obj: dict) -> None:
        try:
            self._on_event(kind, obj)
        except Exception:  # a faulty listener must not stop the watch
            log.exception("listener of %s events failed", self.kind.plural)


def _resource_version(obj: dict | None) -> int | None:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


def _older(incoming: dict, held: dict | None) -> bool:
    """True only when both resourceVersions are integers and `incoming`'s is the smaller."""
    new, old = _resource_version(incoming), _resource_version(held)
    return new is not None and old is not None and new < old


async def start_caches(caches: Iterable[ObjectCache], timeout_s: float | None) -> None:
    """Start several caches at once and return when all have listed: a dead or slow API
    server costs one `timeout_s`, not one per cache. On timeout, one TimeoutError names
    every kind and namespace not listed (else the operator reads a bare "TimeoutError", or
    fixes one RoleBinding, waits again, and learns of the next one)."""
    caches = list(caches)
    for cache in caches:
        cache._launch()
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for c in caches for e in c._synced)), timeout_s)
    except TimeoutError:
        unlisted = [what for what in (c._unlisted() for c in caches) if what]
        raise TimeoutError(f"could not list {'; '.join(unlisted)} within {timeout_s:g} s "
                           "(the warnings above say why: RBAC, a namespace, the API server)") from None


async def run_on_wake(wake: asyncio.Event, debounce_s: float, once: Callable[[], Awaitable[None]],
                      what: str, logger: logging.Logger) -> None:
    """Run `once()` each time `wake` is set, after `debounce_s` (so a burst of watch events
    makes one pass); a pass that fails is logged and retried a second later. Forever,
    until cancelled."""
    while True:
        await wake.wait()
        await asyncio.sleep(debounce_s)
        wake.clear()
        try:
            await once()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed; retrying", what)
            await asyncio.sleep(1.0)
            wake.set()
