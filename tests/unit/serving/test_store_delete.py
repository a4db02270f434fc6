"""Deleting a deployment that still gets traffic is refused with what to change."""

from __future__ import annotations

import pytest

from serving.resources import Deployment, Endpoint
from serving.store import StoreError
from serving.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "store.db")
    store.apply([Endpoint(name="ep", traffic={"blue": 100}, mirror_traffic={"green": 10})],
                [Deployment(name=name, endpoint_name="ep") for name in ("blue", "green", "spare")])
    yield store
    store.close()


def test_a_deployment_with_live_traffic_is_kept(store):
    with pytest.raises(StoreError, match="still receives 100% of the traffic on endpoint 'ep'; "
                                         "set its traffic to 0 first"):
        store.delete_deployment("ep", "blue")
    assert store.get_deployment("ep", "blue") is not None


def test_a_deployment_with_mirrored_traffic_says_to_stop_the_mirror(store):
    """It used to say "set its traffic to 0", which the traffic shown already is."""
    with pytest.raises(StoreError, match=r"still receives 10% of the traffic mirrored on endpoint 'ep'; "
                                         r"set its mirror_traffic to 0 first"):
        store.delete_deployment("ep", "green")
    assert store.get_deployment("ep", "green") is not None


def test_a_deployment_without_traffic_is_deleted(store):
    assert store.delete_deployment("ep", "spare") is True
    assert store.get_deployment("ep", "spare") is None
