"""The last valid version of an OnlineEndpoint / OnlineDeployment, while an edit is refused.

An edit the CRD's schema lets through but scoregate's rules refuse (an unknown
instanceType, traffic that no longer adds up) must not take a serving object down: the
store (controller) and discovery (routers) serve the version they accepted last until a
valid edit or the object's deletion. The uid ties a version to one object: one deleted
and created again under the same name does not inherit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from .translation import CustomResourceError

log = logging.getLogger("scoregate.kubernetes.last_valid")
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


@dataclass(frozen=True)
class Parsed(Generic[V]):
    """What to serve of one object: itself, or while `problem` refuses it, its last valid
    version (None: nothing)."""

    version: Version[V] | None
    problem: CustomResourceError | None = None

    @property
    def kept(self) -> bool:
        return self.problem is not None and self.version is not None


class LastValid(Generic[V]):
    """The versions of one kind accepted in the last pass, by object; each pass parses
    every object (`parse`) and then hands over what it accepted (`remember`)."""

    def __init__(self) -> None:
        self._known: dict[Key, Version[V]] = {}

    def parse(self, obj: dict, parse: Callable[[dict], V],
              usable: Callable[[V], bool] = lambda _value: True) -> Parsed[V]:
        """`parse(obj)`; when it refuses the object, its last valid version if that is of
        the same object (uid) and `usable` (a hook: e.g. a deployment only while its
        endpoint is served)."""
        meta = _meta(obj)
        uid = meta.get("uid", "")
        try:
            return Parsed(Version(uid, int(meta.get("generation") or 0), parse(obj)))
        except CustomResourceError as exc:
            problem = exc
        last = self._known.get(key_of(obj))
        if last is None or last.uid != uid or not usable(last.value):
            log.debug("not serving %s", problem)
            return Parsed(None, problem)
        log.debug("serving the last valid version (generation %d) of %s", last.generation, problem)
        return Parsed(last, problem)

    def remember(self, accepted: dict[Key, Version[V]]) -> None:
        self._known = dict(accepted)
