"""Applying YAML against what the store holds: what a document leaves out, what it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.applying import parse_documents, write
from serving.manifests import ManifestError, read_documents
from serving.resources import Deployment, Endpoint
from serving.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "store.db")
    store.apply([Endpoint(name="ep1", traffic={"d1": 100}, mirror_traffic={"d2": 10})],
                [Deployment(name=name, endpoint_name="ep1") for name in ("d1", "d2")])
    yield store
    store.close()


def apply(store, folder: Path, text: str, name: str = "ep.yml"):
    path = folder / name
    path.write_text(text)
    applied = parse_documents(read_documents([path]), store)
    write(applied, store)
    return applied


def test_an_endpoint_yaml_without_traffic_keeps_the_split(store, tmp_path):
    """Re-applying `name` + `auth_mode` used to wipe traffic and mirror_traffic: every
    unpinned request then got 404 NoDeploymentWithTraffic. Left out keeps, as az ml's
    `online-endpoint update -f` does."""
    apply(store, tmp_path, "name: ep1\nauth_mode: key\ndescription: again\n")
    endpoint = store.get_endpoint("ep1").endpoint
    assert endpoint.traffic == {"d1": 100} and endpoint.mirror_traffic == {"d2": 10}
    assert endpoint.description == "again"


def test_an_endpoint_yaml_without_auth_mode_keeps_the_mode(store, tmp_path):
    """An aml_token endpoint re-applied without auth_mode went back to keys: tokens stopped
    working and keys started to, without a word."""
    apply(store, tmp_path, "name: ep1\nauth_mode: aml_token\n")
    apply(store, tmp_path, "name: ep1\ndescription: again\n")
    assert store.get_endpoint("ep1").endpoint.auth_mode == "aml_token"
    apply(store, tmp_path, "name: ep1\nauth_mode: key\n")  # written out, it changes
    assert store.get_endpoint("ep1").endpoint.auth_mode == "key"
    apply(store, tmp_path, "name: ep2\n")
    assert store.get_endpoint("ep2").endpoint.auth_mode == "key"  # a new endpoint's default


def test_one_split_left_out_keeps_only_that_one(store, tmp_path):
    apply(store, tmp_path, "name: ep1\ntraffic: {d1: 0}\n")
    endpoint = store.get_endpoint("ep1").endpoint
    assert endpoint.traffic == {"d1": 0} and endpoint.mirror_traffic == {"d2": 10}
    apply(store, tmp_path, "name: ep1\nmirror_traffic: {}\n")
    endpoint = store.get_endpoint("ep1").endpoint
    assert endpoint.traffic == {"d1": 0} and endpoint.mirror_traffic == {}


def test_an_empty_split_written_out_clears_it(store, tmp_path):
    apply(store, tmp_path, "name: ep1\ntraffic: {}\nmirror_traffic: {}\n")
    endpoint = store.get_endpoint("ep1").endpoint
    assert endpoint.traffic == {} and endpoint.mirror_traffic == {}


def test_a_new_endpoint_without_traffic_starts_with_none(store, tmp_path):
    apply(store, tmp_path, "name: ep2\n")
    endpoint = store.get_endpoint("ep2").endpoint
    assert endpoint.traffic == {} and endpoint.mirror_traffic == {}


def test_the_kept_split_is_checked_with_what_the_document_gives(store, tmp_path):
    """The kept mirror and a new live split are one endpoint: d2 cannot get both."""
    with pytest.raises(ManifestError, match="mirror_traffic.d2: a deployment cannot get both live and mirrored"):
        apply(store, tmp_path, "name: ep1\ntraffic: {d2: 100}\n")
    assert store.get_endpoint("ep1").endpoint.traffic == {"d1": 100}


def test_a_kept_split_naming_a_missing_deployment_is_refused(tmp_path):
    """Kept traffic is checked as written traffic is: to deployments that exist."""
    store = SqliteStore(tmp_path / "store.db")
    store.apply([Endpoint(name="ep1", traffic={"gone": 100})], [])
    with pytest.raises(ManifestError, match=r"traffic.gone: endpoint 'ep1' has no deployment 'gone'.*kept"):
        apply(store, tmp_path, "name: ep1\n")
    store.close()


def test_azure_ml_fields_with_no_meaning_here_are_named_in_the_summary(store, tmp_path):
    """Accepted so Azure ML YAML applies, but no longer without a word."""
    applied = apply(store, tmp_path, "$schema: https://azuremlschemas.azureedge.net/latest/"
                    "managedOnlineEndpoint.schema.json\nname: ep3\nkind: Managed\nidentity: {type: system_assigned}\n"
                    "---\nname: ep4\n")
    first, second = applied.summary()
    assert first["ignored_fields"] == ["identity", "kind"]  # $schema is read: it tells the kind
    assert "accepted and ignored" in first["warning"] and "identity, kind" in first["warning"]
    assert "ignored_fields" not in second and "warning" not in second


def test_ignored_fields_in_a_deployment_name_their_block(store, tmp_path):
    from tests.support.manifests import ECHO_MODEL

    applied = apply(store, tmp_path, f"name: d3\nendpoint_name: ep1\napp_insights_enabled: true\n"
                    f"code_configuration: {{code: {ECHO_MODEL}, scoring_script: score.py}}\n"
                    "request_settings: {request_timeout_ms: 900, properties: {}}\n")
    [entry] = applied.summary()
    assert entry["ignored_fields"] == ["app_insights_enabled", "request_settings.properties"]


def test_an_endpoint_name_differing_only_in_case_is_refused(store, tmp_path):
    """https://NAME.DOMAIN/score is case-insensitive: MyEndpoint and myendpoint were two
    endpoints, and a host-based request could only ever reach one of them."""
    apply(store, tmp_path, "name: MyEndpoint\n")
    with pytest.raises(ManifestError, match=r"ep.yml: name: endpoint 'myendpoint' differs only in case from "
                                            r"the existing endpoint 'MyEndpoint'"):
        apply(store, tmp_path, "name: myendpoint\n")
    apply(store, tmp_path, "name: MyEndpoint\ndescription: the same endpoint again\n")
    assert [r.endpoint.name for r in store.list_endpoints()] == ["MyEndpoint", "ep1"]


def test_two_documents_whose_names_differ_only_in_case_are_refused(store, tmp_path):
    with pytest.raises(ManifestError, match=r"name: endpoint 'myendpoint' differs only in case from "
                                            r"endpoint 'MyEndpoint' in .*ep.yml"):
        apply(store, tmp_path, "name: MyEndpoint\n---\nname: myendpoint\n")
    assert store.get_endpoint("MyEndpoint") is None


def test_online_and_batch_names_differing_only_in_case_are_refused(store, tmp_path):
    class Batch:
        def endpoint_names(self):
            return {"Nightly"}

    path = tmp_path / "ep.yml"
    path.write_text("name: nightly\n")
    with pytest.raises(ManifestError, match="'nightly' is used by both an online and a batch endpoint"):
        parse_documents(read_documents([path]), store, Batch())


@pytest.mark.parametrize("text, field", [
    ("name: ep-\n", "name"),
    ("name: ep1\ntraffic: {d1-: 100}\n", "traffic.d1-"),
])
def test_a_name_ending_with_a_hyphen_is_refused(store, tmp_path, text, field):
    """Not a DNS label (the endpoint is a host name), nor an Azure ML name."""
    with pytest.raises(ManifestError, match=rf"ep.yml: {field}: must be .*not ending with '-'"):
        apply(store, tmp_path, text)
