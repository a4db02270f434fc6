"""ObjectCache against the emulated API server: a write's answer is not undone by an older
event still queued in the watch stream (hold_watches() makes the stream lag)."""

from __future__ import annotations

from serving.backends.kubernetes.api import CONFIG_MAPS
from serving.backends.kubernetes.watching import ObjectCache
from tests.kubernetes.conftest import eventually

NS = "team-a"
CM = ("", "v1", "configmaps")


async def test_a_written_object_is_not_replaced_by_an_older_queued_event(apiserver, kube_api):
    """The controller writes an object and puts the answer in its cache; an event committed
    just before the write (someone else's change; the deletion of the object the write
    replaced) used to overwrite it, so listeners — the reconcile loop, the router's
    tables — saw the older object (or none) until the write's own event arrived."""
    apiserver.create(CM, {"metadata": {"name": "shares", "namespace": NS}, "data": {"v": "0"}})
    seen: list[tuple[str, str | None]] = []  # (event, what the cache holds when a listener runs)

    def held() -> str | None:
        obj = cache.get(NS, "shares")
        return None if obj is None else obj["data"]["v"]

    cache = ObjectCache(kube_api, CONFIG_MAPS, namespaces=[NS], on_event=lambda kind, _obj: seen.append((kind, held())))
    await cache.start(5)
    seen.clear()  # the list's ADDED
    try:
        apiserver.hold_watches()
        try:
            apiserver.update(CM, NS, "shares", lambda o: o["data"].__setitem__("v", "1"))  # another writer
            cache.put(await kube_api.patch(CONFIG_MAPS, NS, "shares", {"data": {"v": "2"}}))
            assert held() == "2"
        finally:
            apiserver.release_watches()
        apiserver.update(CM, NS, "shares", lambda o: o["data"].__setitem__("v", "3"))  # a marker: all before it seen
        await eventually(lambda: held() == "3", what="the marker event")
        assert [v for _, v in seen] == ["2", "3"], seen  # never back to 1

        seen.clear()
        apiserver.hold_watches()
        try:
            apiserver.delete(CM, NS, "shares")  # deleted, then created again by the controller
            cache.put(await kube_api.create(CONFIG_MAPS, NS, {"metadata": {"name": "shares"}, "data": {"v": "4"}}))
        finally:
            apiserver.release_watches()
        apiserver.update(CM, NS, "shares", lambda o: o["data"].__setitem__("v", "5"))
        await eventually(lambda: held() == "5", what="the marker event")
        assert [v for _, v in seen] == ["4", "5"], seen  # the old object's deletion did not remove the new one
    finally:
        await cache.close()


async def test_resource_versions_that_are_not_integers_are_not_compared(apiserver, kube_api):
    """Kubernetes calls resourceVersions opaque: one that does not parse as an integer is
    never compared, and the newest to arrive wins, as before."""
    apiserver.create(CM, {"metadata": {"name": "c", "namespace": NS}, "data": {"v": "0"}})
    cache = ObjectCache(kube_api, CONFIG_MAPS, namespaces=[NS])
    await cache.start(5)
    try:
        cache.put({"metadata": {"name": "c", "namespace": NS, "resourceVersion": "opaque-9"}, "data": {"v": "x"}})
        apiserver.update(CM, NS, "c", lambda o: o["data"].__setitem__("v", "1"))
        await eventually(lambda: cache.get(NS, "c")["data"]["v"] == "1", what="the event taken")
        cache.put({"metadata": {"name": "c", "namespace": NS, "resourceVersion": "1"}, "data": {"v": "old"}})
        assert cache.get(NS, "c")["data"]["v"] == "1"  # an integer older than the one held: kept
    finally:
        await cache.close()
