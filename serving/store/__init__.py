"""Where desired state lives: the Store protocol and its records.

The embedded default is serving.store.sqlite (a file in the state dir); on a cluster
the same protocol is backed by Kubernetes objects. Calls are synchronous and short:
async callers run them with asyncio.to_thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from ..resources import Deployment, Endpoint, InstanceType


@dataclass(frozen=True)
class DeploymentRecord:
    deployment: Deployment  # desired, as last applied
    last_good: Deployment | None  # the spec of the last successful rollout
    rollout: dict | None  # the latest rollout record
    # The provisioning attempt the user last asked for ("" if never): an apply of a
    # deployment whose rollout failed changes it, and the rollout manager then tries that
    # version again (a failed version is otherwise never retried, not even by a restart).
    attempt: str = ""


@dataclass(frozen=True)
class EndpointRecord:
    endpoint: Endpoint
    primary_key: str
    secondary_key: str
    created_at: float
    updated_at: float


class StoreError(Exception):
    """A change the store refuses (e.g. deleting a deployment that still has traffic)."""


def check_no_traffic(endpoint: Endpoint, name: str) -> None:
    """StoreError when deployment `name` still gets live or mirrored traffic of `endpoint`:
    the rule of every store's delete_deployment, with what to change first."""
    for field, how in (("traffic", ""), ("mirror_traffic", " mirrored")):
        percent = getattr(endpoint, field).get(name, 0)
        if percent > 0:
            raise StoreError(f"deployment '{name}' still receives {percent}% of the traffic{how} on endpoint"
                             f" '{endpoint.name}'; set its {field} to 0 first")


class Store(Protocol):
    def apply(self, endpoints: list[Endpoint], deployments: list[Deployment],
              instance_types: list[InstanceType] = (), retry: Iterable[tuple[str, str]] = ()) -> None: ...
    def list_deployment_records(self) -> list[DeploymentRecord]: ...
    def save_rollout(self, endpoint_name: str, name: str, rollout: dict,
                     last_good: Deployment | None = None) -> None: ...
    def list_instance_types(self) -> list[InstanceType]: ...
    def secret(self, name: str) -> str: ...
    def list_endpoints(self) -> list[EndpointRecord]: ...
    def get_endpoint(self, name: str) -> EndpointRecord | None: ...
    def delete_endpoint(self, name: str) -> bool: ...
    def list_deployments(self, endpoint_name: str | None = None) -> list[Deployment]: ...
    def get_deployment(self, endpoint_name: str, name: str) -> Deployment | None: ...
    def delete_deployment(self, endpoint_name: str, name: str) -> bool: ...
    def set_instance_count(self, endpoint_name: str, name: str, count: int) -> Deployment: ...
    def regenerate_key(self, endpoint_name: str, key_type: str) -> EndpointRecord: ...
    def close(self) -> None: ...
