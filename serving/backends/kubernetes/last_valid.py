"""The last valid version of an OnlineEndpoint / OnlineDeployment, kept across restarts.

An edit the CRD's schema lets through but scoregate's rules refuse (an unknown
instanceType, traffic that no longer adds up) must not take a serving object down — also
not when a controller or a router starts while the object is invalid (a restart, a
leader change, a new router pod). So the controller records the version it last accepted
in the object's own status, `status.lastValid` = {uid, generation, endpoint | deployment}
(status.py writes it, `save`), and both the store (controller) and discovery (routers)
serve that version while the object is refused. The status is where a reader already
looks (routers watch the objects), and `kubectl apply` never touches it.
A version accepted by this process since is newer than the status (which is written a
moment later), so memory wins over the record. The uid ties a record to one object: one
deleted and created again under the same name starts without a status, and a late write
meant for the old object is ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from .api import KubeApi, Kind, replace_status_fields, status_of, without_nulls
from .translation import CustomResourceError

log = logging.getLogger("scoregate.kubernetes.last_valid")
STATUS_FIELD = "lastValid"
V = TypeVar("V")
Key = tuple[str, str]  # namespace, name


def _meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


def key_of(obj: dict) -> Key:
    return _meta(obj).get("namespace", ""), _meta(obj).get("name", "")


@dataclass(frozen=True)
class Version(Generic[V]):
    """A version of one object that scoregate accepted: the object's uid, its generation
    then, and the parsed resource (Endpoint or Deployment)."""

    uid: str
    generation: int
    value: V
    field: str  # the record's key for the value: "endpoint" or "deployment"

    def record(self) -> dict:
        """As `status.lastValid` holds it. Without null members: an API server need not
        keep them, and the resource's own are defaults `from_dict` restores (a null a user
        put inside `environment` is lost with them: that version's hash then differs)."""
        return {"uid": self.uid, "generation": self.generation, self.field: without_nulls(self.value.to_dict())}


@dataclass(frozen=True)
class Parsed(Generic[V]):
    """What to serve of one object: itself, or while `problem` refuses it, its last valid
    version (None: nothing)."""

    version: Version[V] | None
    problem: CustomResourceError | None = None


class LastValid(Generic[V]):
    """The versions of one kind accepted in the last pass, by object; each pass parses
    every object (`parse`) and then hands over what it accepted (`remember`)."""

    def __init__(self, field: str, from_dict: Callable[[dict], V]) -> None:
        self.field, self._from_dict = field, from_dict
        self._known: dict[Key, Version[V]] = {}

    def parse(self, obj: dict, parse: Callable[[dict], V],
              usable: Callable[[V], bool] = lambda _value: True,
              replaces: Callable[[dict, V, V], None] = lambda _obj, _last, _value: None) -> Parsed[V]:
        """`parse(obj)`; when it refuses the object, its last valid version — from memory,
        else from its status — if that is the same object (uid) and `usable` (a hook:
        e.g. a deployment only while its endpoint is served). `replaces(obj, last, value)`
        refuses (CustomResourceError) a value that may not replace the last valid one."""
        meta = _meta(obj)
        uid = meta.get("uid", "")
        try:
            value = parse(obj)
            if (last := self._last(obj)) is not None:
                replaces(obj, last.value, value)
            return Parsed(Version(uid, int(meta.get("generation") or 0), value, self.field))
        except CustomResourceError as exc:
            problem = exc
        last = self._last(obj)
        if last is None or not usable(last.value):
            log.debug("not serving %s", problem)
            return Parsed(None, problem)
        log.debug("serving the last valid version (generation %d) of %s", last.generation, problem)
        return Parsed(last, problem)

    def _last(self, obj: dict) -> Version[V] | None:
        """The last valid version of this very object (uid), if any."""
        uid = _meta(obj).get("uid", "")
        last = self._known.get(key_of(obj))
        if last is None or last.uid != uid:
            last = self._recorded(obj)
        return last if last is not None and last.uid == uid else None

    def remember(self, accepted: dict[Key, Version[V]]) -> None:
        self._known = dict(accepted)

    def _recorded(self, obj: dict) -> Version[V] | None:
        record = (obj.get("status") or {}).get(STATUS_FIELD)
        if not isinstance(record, dict) or not isinstance(record.get(self.field), dict):
            return None
        try:
            value = self._from_dict(record[self.field])
            return Version(str(record.get("uid") or ""), int(record.get("generation") or 0), value, self.field)
        except (TypeError, ValueError) as exc:
            log.warning("ignoring status.%s of %s/%s: %s", STATUS_FIELD, *key_of(obj), exc)
            return None


async def save(api: KubeApi, kind: Kind, obj: dict, version: Version | None) -> bool:
    """Make `status.lastValid` of `obj` the record of `version` (None: remove it). False
    when it already was (or the object is gone). The record is replaced whole
    (replace_status_fields: a merge patch would keep a key the new version lacks)."""
    record = version.record() if version is not None else None
    if (obj.get("status") or {}).get(STATUS_FIELD) == record:
        return False
    if record is not None:
        return await replace_status_fields(api, kind, obj, {STATUS_FIELD: record})
    namespace, name = key_of(obj)
    try:
        await api.patch(kind, namespace, name, {"status": {STATUS_FIELD: None}}, subresource="status")
    except Exception as exc:
        if status_of(exc) != 404:
            raise
        return False
    return True
