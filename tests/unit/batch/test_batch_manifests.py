"""Batch YAML: recognised by $schema or kind, settings flat or nested, errors name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving.batch.manifests import is_batch, parse_batch, parse_batch_all
from serving.batch.resources import BatchDeployment, BatchEndpoint, BatchSettings, RetrySettings
from serving.manifests import Document, ManifestError, read_documents

REPO = Path(__file__).resolve().parents[3]
SCHEMA = "https://azuremlschemas.azureedge.net/latest/"


@pytest.fixture
def code(tmp_path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def init(): pass\ndef run(b): return b\n")
    (tmp_path / "model").mkdir()
    return tmp_path


def doc(base: Path, body: dict, source: str = "d.yml") -> Document:
    return Document(str(base / source), str(base), body)


def deployment_body(**extra) -> dict:
    return {"name": "main", "endpoint_name": "ep", "kind": "batch",
            "code_configuration": {"code": "./code", "scoring_script": "score.py"}, **extra}


def test_is_batch_by_schema_or_kind():
    assert is_batch({"$schema": SCHEMA + "batchEndpoint.schema.json", "name": "x"})
    assert is_batch({"$schema": SCHEMA + "batchDeployment.schema.json"})
    assert is_batch({"$schema": SCHEMA + "modelBatchDeployment.schema.json"})
    assert is_batch({"kind": "Batch", "name": "x"})
    assert not is_batch({"$schema": SCHEMA + "managedOnlineEndpoint.schema.json", "name": "x"})
    assert not is_batch({"name": "x", "endpoint_name": "y"})
    assert not is_batch(Document("f", ".", {"name": "x", "kind": "online"}))


def test_endpoint_with_default_deployment(code):
    endpoint = parse_batch(doc(code, {"$schema": SCHEMA + "batchEndpoint.schema.json", "name": "ep",
                                      "defaults": {"deployment_name": "main"}, "description": "d"}))
    assert endpoint == BatchEndpoint(name="ep", auth_mode="key", default_deployment="main", description="d")


@pytest.mark.parametrize("body, field, words", [
    ({"name": "ep", "auth_mode": "aad_token"}, "auth_mode", "aad_token is not available"),
    ({"name": "e"}, "name", "2-32 letters"),
    ({"name": "ep", "traffic": {"a": 100}}, "traffic", "unknown field"),
    ({"name": "ep", "defaults": {"deployment": "x"}}, "defaults.deployment", "unknown field"),
])
def test_endpoint_errors_name_the_field(code, body, field, words):
    with pytest.raises(ManifestError) as info:
        parse_batch(doc(code, {"kind": "batch", **body}))
    assert info.value.field == field and words in info.value.message
    assert str(info.value).startswith(str(code / "d.yml"))


def test_flat_settings_older_schema(code):
    deployment = parse_batch(doc(code, deployment_body(
        model={"path": "./model"}, mini_batch_size=5, instance_count=2, max_concurrency_per_instance=3,
        error_threshold=7, retry_settings={"max_retries": 1, "timeout": 2.5}, output_action="summary_only",
        output_file_name="out.csv", logging_level="DEBUG", environment_variables={"A": 1})))
    assert isinstance(deployment, BatchDeployment)
    assert deployment.code == str(code / "code") and deployment.model_path == str(code / "model")
    assert deployment.environment_variables == {"A": "1"}
    assert deployment.settings == BatchSettings(5, 2, 3, 7, RetrySettings(1, 2.5), "summary_only", "out.csv", "debug")
    assert deployment.settings.parallelism == 6


def test_nested_settings_newer_schema_with_resources(code):
    deployment = parse_batch(doc(code, {
        "$schema": SCHEMA + "modelBatchDeployment.schema.json", "type": "model", "compute": "azureml:c",
        "name": "main", "endpoint_name": "ep", "code_configuration": {"code": "code", "scoring_script": "score.py"},
        "resources": {"instance_count": 3},
        "settings": {"mini_batch_size": 20, "retry_settings": {"timeout": 60},
                     "environment_variables": {"B": "x"}}}))
    assert deployment.settings.instance_count == 3 and deployment.settings.mini_batch_size == 20
    assert deployment.settings.retry_settings == RetrySettings(max_retries=3, timeout=60.0)
    assert deployment.environment_variables == {"B": "x"}
    assert deployment.settings.output_file_name == "predictions.csv"  # Azure ML's defaults


@pytest.mark.parametrize("extra, field, words", [
    ({"mini_batch_size": 0}, "mini_batch_size", "from 1"),
    ({"settings": {"mini_batch_size": "10"}}, "settings.mini_batch_size", "integer"),
    ({"error_threshold": -2}, "error_threshold", "from -1"),
    ({"settings": {"retry_settings": {"timeout": 0}}}, "settings.retry_settings.timeout", "seconds"),
    ({"settings": {"retry_settings": {"tries": 1}}}, "settings.retry_settings.tries", "unknown field"),
    ({"settings": {"output_action": "append"}}, "settings.output_action", "append_row"),
    ({"output_file_name": "../x.csv"}, "output_file_name", "plain file name"),
    ({"settings": {"colour": 1}}, "settings.colour", "unknown setting"),
    ({"mini_batch_size": 1, "settings": {"mini_batch_size": 2}}, "settings.mini_batch_size", "keep one"),
    ({"instance_count": 1, "resources": {"instance_count": 2}}, "resources.instance_count", "keep one"),
    ({"resources": {"instance_count": 0}}, "resources.instance_count", "from 1"),
    ({"request_settings": {}}, "request_settings", "unknown field"),
    ({"type": "pipeline"}, "type", "only model"),
    ({"model": "azureml:iris:1"}, "model", "registered assets"),
    ({"model": {"path": "./nowhere"}}, "model.path", "does not exist"),
    ({"code_configuration": {"code": "./code", "scoring_script": "missing.py"}},
     "code_configuration.scoring_script", "not a file"),
    ({"code_configuration": None}, "code_configuration", "required"),
    ({"environment_variables": {"1A": "x"}}, "environment_variables.1A", "variable name"),
    # as online deployments': not Python's text of a YAML null, boolean or list
    ({"environment_variables": {"DEBUG": True}}, "environment_variables.DEBUG", "must be a string"),
    ({"settings": {"environment_variables": {"A": None}}}, "settings.environment_variables.A", "must be a string"),
])
def test_deployment_errors_name_the_field(code, extra, field, words):
    with pytest.raises(ManifestError) as info:
        parse_batch(doc(code, deployment_body(**extra)))
    assert info.value.field == field, info.value
    assert words in info.value.message, info.value


def test_parse_all_checks_references(code):
    endpoint = doc(code, {"kind": "batch", "name": "ep", "defaults": {"deployment_name": "main"}}, "e.yml")
    deployment = doc(code, deployment_body(), "m.yml")
    endpoints, deployments = parse_batch_all([endpoint, deployment], set(), set())
    assert [e.name for e in endpoints] == ["ep"] and [d.name for d in deployments] == ["main"]
    with pytest.raises(ManifestError, match="no batch endpoint 'ep'") as info:
        parse_batch_all([deployment], set(), set())
    assert info.value.field == "endpoint_name"
    with pytest.raises(ManifestError, match="has no deployment 'main'") as info:
        parse_batch_all([endpoint], set(), set())
    assert info.value.field == "defaults.deployment_name"
    assert parse_batch_all([endpoint], set(), {("ep", "main")})[0][0].name == "ep"
    assert parse_batch_all([deployment], {"ep"}, set())[1][0].name == "main"
    with pytest.raises(ManifestError, match="also defined in"):
        parse_batch_all([endpoint, deployment, doc(code, deployment_body(), "again.yml")], set(), set())


def test_the_iris_batch_example_parses():
    documents = read_documents([REPO / "examples" / "iris-batch"])
    assert all(is_batch(d) for d in documents)
    endpoints, deployments = parse_batch_all(documents, set(), set())
    assert endpoints[0].name == "iris-batch" and endpoints[0].default_deployment == "classifier"
    settings = deployments[0].settings
    assert (settings.mini_batch_size, settings.max_concurrency_per_instance, settings.instance_count) == (10, 2, 1)
    assert deployments[0].model_path == str(REPO / "examples" / "iris" / "blue" / "model")


def test_yaml_round_trip_of_resources(code):
    deployment = parse_batch(doc(code, deployment_body(settings={"retry_settings": {"max_retries": 0}})))
    assert BatchDeployment.from_dict(yaml.safe_load(yaml.safe_dump(deployment.to_dict()))) == deployment
