"""KubernetesStore: the Store protocol on custom resources, called as the controller calls it."""

from __future__ import annotations

import asyncio

import pytest

from serving.backends.kubernetes.store import KubernetesStore
from serving.backends.kubernetes.translation import InstanceTypeSpec
from serving.resources import Deployment, Endpoint
from serving.store import StoreError
from tests.kubernetes.conftest import eventually

NS = "team-a"


@pytest.fixture
async def store(kube_api):
    store = KubernetesStore(kube_api, namespaces=(NS,))
    await store.start()
    yield store
    await store.aclose()


def blue(**changes) -> Deployment:
    return Deployment(**{**dict(name="blue", endpoint_name="iris", code="https://m.example/code.tar.gz",
                                scoring_script="score.py", instance_type="cpu-small"), **changes})


async def test_apply_list_scale_regenerate_delete(apiserver, store):
    gpu = InstanceTypeSpec("cpu-small", {"pool": "cpu"}, {"cpu": "500m"}, {"memory": "1Gi"})
    endpoint = Endpoint(name="iris", traffic={"blue": 100})
    await asyncio.to_thread(store.apply, [endpoint], [blue()], [gpu])
    [record] = await eventually(store.list_endpoints)  # listed once its key Secret exists
    assert record.endpoint == endpoint and record.primary_key and record.secondary_key != record.primary_key
    assert await eventually(lambda: store.get_deployment("iris", "blue")) == blue()
    assert store.placement(blue()).instance_type == gpu
    assert store.placement(blue()).owner["name"] == "iris-blue"
    assert gpu in store.list_instance_types()

    scaled = await asyncio.to_thread(store.set_instance_count, "iris", "blue", 3)
    assert scaled.instance_count == 3
    # The answer carries the version the controller will see (instance type resolved),
    # and scaling alone is not a new version.
    assert scaled.resolved_instance_type == gpu
    assert scaled.replica_spec_hash() == store.get_deployment("iris", "blue").replica_spec_hash()
    renewed = await asyncio.to_thread(store.regenerate_key, "iris", "secondary")
    assert renewed.primary_key == record.primary_key and renewed.secondary_key != record.secondary_key

    with pytest.raises(StoreError, match="still receives 100% of the traffic on endpoint 'iris'"):
        await asyncio.to_thread(store.delete_deployment, "iris", "blue")
    # mirrored traffic too, as the embedded store: the mirror would go on to nothing
    await asyncio.to_thread(store.apply, [Endpoint(name="iris", traffic={"blue": 100}, mirror_traffic={"green": 10})],
                            [blue(), blue(name="green")])
    await eventually(lambda: store.get_deployment("iris", "green"))
    await eventually(lambda: store.get_endpoint("iris").endpoint.mirror_traffic == {"green": 10})
    with pytest.raises(StoreError, match="10% of the traffic mirrored on endpoint 'iris'; set its mirror_traffic"):
        await asyncio.to_thread(store.delete_deployment, "iris", "green")
    assert await asyncio.to_thread(store.delete_endpoint, "iris")
    await eventually(lambda: not store.list_endpoints() and not store.list_deployments())
    assert apiserver.objects_of("onlinedeployments", NS) == []


async def test_writes_from_the_event_loop_are_refused(store):
    with pytest.raises(RuntimeError, match="asyncio.to_thread"):
        store.apply([Endpoint(name="iris")], [])


async def test_admission_errors_become_store_errors(store):
    with pytest.raises(StoreError, match="instanceCount"):
        await asyncio.to_thread(store.apply, [], [blue(instance_count=99)])


async def test_named_secrets_are_created_once_and_kept(apiserver, store):
    first = await asyncio.to_thread(store.secret, "aml_token")
    assert first and await asyncio.to_thread(store.secret, "aml_token") == first
    assert await asyncio.to_thread(store.secret, "other") != first
    [secret] = [s for s in apiserver.objects_of("secrets", NS) if s["metadata"]["name"] == "scoregate-secrets"]
    assert set(secret["data"]) == {"aml_token", "other"}


async def test_an_invalid_edit_keeps_the_last_valid_version_until_deleted_or_recreated(apiserver, kube_api, store):
    from serving.backends.kubernetes.api import ONLINE_DEPLOYMENTS, ONLINE_ENDPOINTS
    small = InstanceTypeSpec("cpu-small", {"pool": "cpu"}, {"cpu": "500m"}, {"memory": "1Gi"})
    await asyncio.to_thread(store.apply, [Endpoint(name="iris", traffic={"blue": 100})], [blue()], [small])
    await eventually(lambda: store.list_endpoints() and store.get_deployment("iris", "blue"))
    good = store.get_deployment("iris", "blue")

    await kube_api.patch(ONLINE_DEPLOYMENTS, NS, "iris-blue", {"spec": {"instanceType": "cpu-smal",
                                                                         "instanceCount": 3}})
    await kube_api.patch(ONLINE_ENDPOINTS, NS, "iris", {"spec": {"traffic": {"blue": 60}}})
    problems = await eventually(lambda: len(store.snapshot.problems) == 2 and store.snapshot.problems)
    assert problems[("OnlineDeployment", NS, "iris-blue")].endswith("spec.instanceType: no InstanceType named cpu-smal")
    assert problems[("OnlineEndpoint", NS, "iris")].endswith("spec.traffic: weights must add up to 100"
                                                              " (or all be 0), got 60")
    assert store.get_deployment("iris", "blue") == good  # unchanged: not the refused instanceCount either
    assert store.get_endpoint("iris").endpoint.traffic == {"blue": 100}
    assert store.snapshot.kept[("OnlineDeployment", NS, "iris-blue")] == good
    assert store.placement(good).instance_type == small

    # deleted and created again, still invalid: a new object, nothing of the old one is served
    [cr] = apiserver.objects_of("onlinedeployments", NS)
    await kube_api.delete(ONLINE_DEPLOYMENTS, NS, "iris-blue")
    await eventually(lambda: store.get_deployment("iris", "blue") is None)
    body = {k: cr[k] for k in ("apiVersion", "kind", "spec")}
    body["metadata"] = {"name": "iris-blue", "namespace": NS}
    await kube_api.create(ONLINE_DEPLOYMENTS, NS, body)
    await eventually(lambda: ("OnlineDeployment", NS, "iris-blue") in store.snapshot.problems
                     and len(store.custom_objects(ONLINE_DEPLOYMENTS)) == 1)
    assert store.get_deployment("iris", "blue") is None and not store.snapshot.kept.get(("OnlineDeployment", NS,
                                                                                             "iris-blue"))


async def test_a_keys_secret_edited_into_bytes_does_not_stop_the_store(apiserver, store):
    """A keys Secret edited by hand to hold bytes that are not text made every rebuild of
    the snapshot fail (UnicodeDecodeError): no edit of any endpoint was seen again. The
    endpoint keeps the keys last read, and the store goes on following the cluster."""
    import base64

    await asyncio.to_thread(store.apply, [Endpoint(name="iris", traffic={"blue": 100})], [blue()])
    [record] = await eventually(store.list_endpoints)
    garbage = base64.b64encode(b"\xff\xfe not text \x80").decode()
    apiserver.update(("", "v1", "secrets"), NS, "scoregate-keys-iris",
                     lambda s: s["data"].__setitem__("primaryKey", garbage))
    await asyncio.to_thread(store.apply, [Endpoint(name="iris", traffic={"blue": 100}, mirror_traffic={"green": 10})],
                            [blue(), blue(name="green")])  # a later edit is still seen
    await eventually(lambda: store.get_endpoint("iris").endpoint.mirror_traffic == {"green": 10})
    assert store.get_endpoint("iris").primary_key == record.primary_key


async def test_a_named_secret_edited_into_bytes_is_an_error_naming_the_secret_and_key(apiserver, store, caplog):
    """Secret scoregate-secrets edited by hand (e.g. --from-file of random bytes): reading
    it raised a bare UnicodeDecodeError naming nothing. Now a StoreError (and a log line)
    names the Secret and the key; the Secret is left as it is (the routers read the same
    key), the other named secrets and the store go on working, and text put back is read."""
    import base64
    import logging

    first = await asyncio.to_thread(store.secret, "aml_token")
    other = await asyncio.to_thread(store.secret, "other")
    garbage = base64.b64encode(b"\xff\xfe not text \x80").decode()
    apiserver.update(("", "v1", "secrets"), NS, "scoregate-secrets",
                     lambda s: s["data"].__setitem__("aml_token", garbage))
    with caplog.at_level(logging.ERROR, logger="scoregate.store.kubernetes"), \
            pytest.raises(StoreError, match=f"Secret {NS}/scoregate-secrets: key aml_token is not base64 of UTF-8 text"):
        await asyncio.to_thread(store.secret, "aml_token")
    assert f"Secret {NS}/scoregate-secrets: key aml_token" in caplog.text
    assert apiserver.get(("", "v1", "secrets"), NS, "scoregate-secrets")["data"]["aml_token"] == garbage
    assert await asyncio.to_thread(store.secret, "other") == other
    await asyncio.to_thread(store.apply, [Endpoint(name="iris", traffic={})], [])
    await eventually(store.list_endpoints)  # the store still follows the cluster
    apiserver.update(("", "v1", "secrets"), NS, "scoregate-secrets",
                     lambda s: s["data"].__setitem__("aml_token", base64.b64encode(first.encode()).decode()))
    assert await asyncio.to_thread(store.secret, "aml_token") == first
