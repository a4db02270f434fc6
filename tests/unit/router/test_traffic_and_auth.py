"""Deployment choice and key checks, with a seeded rng."""

from __future__ import annotations

import pickle
import random
from collections import Counter

import pytest

from router.auth import KeyAuthenticator
from router.errors import DeploymentNotFound, NoTrafficDeployment, Unauthorized
from router.routing_table import DeploymentRoute, EndpointRoute
from router.traffic import DeploymentPicker

DEPLOYMENTS = {n: DeploymentRoute(n) for n in ("blue", "green", "shadow")}
ENDPOINT = EndpointRoute("ep", keys=("k1", "k2"), traffic=(("blue", 75), ("green", 25)),
                         mirror_traffic=(("shadow", 20),), deployments=DEPLOYMENTS)


def test_weighted_split_follows_the_weights():
    picker = DeploymentPicker(random.Random(7))
    counts = Counter(picker.pick(ENDPOINT, None)[0].name for _ in range(20000))
    assert abs(counts["green"] / 20000 - 0.25) < 0.015
    assert set(counts) == {"blue", "green"}


def test_pin_may_name_a_deployment_without_traffic_and_must_exist():
    picker = DeploymentPicker(random.Random(1))
    assert picker.pick(ENDPOINT, "shadow") == (DEPLOYMENTS["shadow"], True)
    with pytest.raises(DeploymentNotFound):
        picker.pick(ENDPOINT, "purple")


def test_no_traffic_is_a_404_that_suggests_the_pin():
    empty = EndpointRoute("ep", deployments=DEPLOYMENTS)
    with pytest.raises(NoTrafficDeployment, match="azureml-model-deployment"):
        DeploymentPicker().pick(empty, None)


def test_mirror_share_and_never_to_the_serving_deployment():
    picker = DeploymentPicker(random.Random(3))
    copies = sum(len(picker.mirror_targets(ENDPOINT, "blue")) for _ in range(10000))
    assert abs(copies / 10000 - 0.20) < 0.02
    assert picker.mirror_targets(ENDPOINT, "shadow") == []


def _as(kind: str, header: str | None):
    """The header as the data path passes it (raw bytes) or as aiohttp's routes do (str)."""
    return header.encode() if kind == "bytes" and header is not None else header


@pytest.mark.parametrize("kind", ["bytes", "str"])
@pytest.mark.parametrize("header", ["Bearer k1", "Bearer k2", "bearer k2", "BEARER k1", "Bearer  k1 "])
def test_either_key_is_accepted(header, kind):
    KeyAuthenticator().check(ENDPOINT, _as(kind, header))


@pytest.mark.parametrize("kind", ["bytes", "str"])
@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer k3", "Basic k1", "Bearer k1x", "k1",
                                    "Bearer k1" + " " * 4100])
def test_anything_else_is_refused(header, kind):
    with pytest.raises(Unauthorized):
        KeyAuthenticator().check(ENDPOINT, _as(kind, header))


def test_endpoint_keys_survive_the_trip_to_a_worker_process():
    """Routing tables are pickled to `serve --workers` processes; the keys' bytes are made
    again there (they are not pickled), so the copy authenticates like the original."""
    copy = pickle.loads(pickle.dumps(ENDPOINT))
    assert copy == ENDPOINT and copy.key_bytes == (b"k1", b"k2")
    KeyAuthenticator().check(copy, b"Bearer k2")


def test_auth_mode_none_and_unsupported_modes():
    KeyAuthenticator().check(EndpointRoute("ep", auth_mode="none"), None)
    with pytest.raises(Unauthorized):
        KeyAuthenticator().check(EndpointRoute("ep", auth_mode="aml_token"), "Bearer whatever")
