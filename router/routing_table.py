"""Routing state the data path reads: a frozen snapshot, swapped whole.

The control plane (serving.controller.publisher) builds a new RoutingTable on every
change of desired or observed state and hands it to RoutingTableHolder.swap(). A
request reads `holder.current` once, at its start, and uses that snapshot to the end,
so it never sees half of an update. Nothing here is mutated after construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Mapping

_EMPTY: Mapping = MappingProxyType({})


def _reduce_with_plain_dicts(obj):
    """Pickle support (tables go to `serve --workers` processes): a read-only mapping
    travels as a dict and becomes read-only again in __post_init__."""
    values = tuple(dict(v) if isinstance(v, MappingProxyType) else v
                   for v in (getattr(obj, f.name) for f in fields(obj) if f.init))
    return type(obj), values


@dataclass(frozen=True, slots=True)
class Replica:
    """One running model server a request can be forwarded to."""

    replica_id: str
    host: str
    port: int
    scoring_path: str = "/score"
    liveness_path: str = "/"
    scheme: str = "http"  # "https" with router→replica mTLS
    # Made once here, read by every request forwarded to the replica:
    authority: str = field(init=False, repr=False, compare=False)  # "host:port", the Host header
    pool_key: tuple = field(init=False, repr=False, compare=False)  # its upstream pool's key

    def __post_init__(self) -> None:
        object.__setattr__(self, "authority", f"{self.host}:{self.port}")
        object.__setattr__(self, "pool_key", (self.scheme, self.host, self.port))

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """Per-deployment request handling, named as in the deployment YAML."""

    request_timeout_ms: int = 5000
    max_concurrent_requests_per_instance: int = 1
    max_queue_wait_ms: int = 500


@dataclass(frozen=True, slots=True)
class DeploymentRoute:
    name: str
    replicas: tuple[Replica, ...] = ()
    request_settings: RequestSettings = RequestSettings()
    # Why it has no replica and will not get one by itself (its only version failed to
    # roll out): said in the 503 of a request pinned to it. None: none known.
    unavailable_reason: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointRoute:
    """An endpoint as the router sees it.

    `traffic` holds the deployments with a positive weight. A deployment in it may have
    no ready replica: its share of requests then gets 503, as on a real cluster.
    """

    name: str
    auth_mode: str = "key"  # key | aml_token | none
    keys: tuple[str, ...] = ()
    traffic: tuple[tuple[str, int], ...] = ()
    mirror_traffic: tuple[tuple[str, int], ...] = ()
    rate_limit: tuple[float, int] | None = None  # (requests per second, burst)
    # Why no traffic is in effect yet (deployments still rolling out): a 503 to callers.
    unavailable_reason: str | None = None
    deployments: Mapping[str, DeploymentRoute] = field(default_factory=lambda: _EMPTY)
    # The keys as bytes, made once here: every caller's credential is compared with them.
    key_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.deployments, MappingProxyType):
            object.__setattr__(self, "deployments", MappingProxyType(dict(self.deployments)))
        object.__setattr__(self, "key_bytes", tuple(key.encode() for key in self.keys))

    __reduce__ = _reduce_with_plain_dicts


@dataclass(frozen=True, slots=True)
class RoutingTable:
    version: int = 0
    endpoints: Mapping[str, EndpointRoute] = field(default_factory=lambda: _EMPTY)
    # Host routes (`https://NAME.DOMAIN/score`) compare names as DNS does, without case:
    # an endpoint's name by its lowercase form, for those that have capitals.
    host_names: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.endpoints, MappingProxyType):
            object.__setattr__(self, "endpoints", MappingProxyType(dict(self.endpoints)))
        object.__setattr__(self, "host_names", {name.lower(): name for name in self.endpoints
                                                if name != name.lower()})

    __reduce__ = _reduce_with_plain_dicts


class RoutingTableHolder:
    """The one mutable reference: replaced atomically, never edited in place.

    Listeners are called synchronously after a swap (e.g. the upstream pool dropping
    connections to replicas that left); they must not block.
    """

    __slots__ = ("current", "_listeners")

    def __init__(self, initial: RoutingTable | None = None) -> None:
        # Read `current` freely; only swap() sets it. A plain attribute, not a property:
        # the data path reads it twice per request, and a property costs a Python call.
        self.current = initial or RoutingTable()
        self._listeners: list = []

    def swap(self, table: RoutingTable) -> None:
        if table.version <= self.current.version and table is not self.current:
            table = RoutingTable(version=self.current.version + 1, endpoints=table.endpoints)
        old, self.current = self.current, table
        for listener in tuple(self._listeners):
            listener(old, table)

    def subscribe(self, listener) -> None:
        self._listeners.append(listener)
