"""YAML validation: every error names the file and the field; good YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loadtests.scenarios.deployments import deployment_body
from serving.manifests import ManifestError, parse_all, read_documents
from serving.views import deployment_view
from tests.support.manifests import ECHO_MODEL, write_deployment, write_endpoint

REPO = Path(__file__).resolve().parents[3]


def test_the_iris_example_parses():
    endpoints, deployments = parse_all(read_documents([REPO / "examples" / "iris"]), set(), set())
    assert [e.name for e in endpoints] == ["iris"]
    assert endpoints[0].traffic == {"blue": 90, "green": 10}
    assert sorted(d.name for d in deployments) == ["blue", "green"]
    blue = next(d for d in deployments if d.name == "blue")
    assert Path(blue.code).is_absolute() and blue.scoring_script == "score.py"
    assert Path(blue.model_path, "model.json").is_file()
    assert blue.request_settings.max_concurrent_requests_per_instance == 1


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    return path


DEPLOYMENT = f"""
name: blue
endpoint_name: ep
code_configuration: {{code: {ECHO_MODEL}, scoring_script: score.py}}
"""


@pytest.mark.parametrize("text, field, words", [
    ("name: ep\ntraffic: {aa: 50, bb: 20}\n", "traffic", "add up to 100"),
    ("name: 1ep\n", "name", "starting with a letter"),
    ('name: "ep\\n"\n', "name", "starting with a letter"),  # "$" would have let a newline through
    (DEPLOYMENT + 'environment_variables: {"A\\n": x}\n', "environment_variables", "name"),
    # given to the model as "None", "True", "['a']" before: refused, as custom resources are
    (DEPLOYMENT + "environment_variables: {LEVEL: null}\n", "environment_variables.LEVEL", "must be a string"),
    (DEPLOYMENT + "environment_variables: {DEBUG: true}\n", "environment_variables.DEBUG", "must be a string"),
    (DEPLOYMENT + "environment_variables: {HOSTS: [a, b]}\n", "environment_variables.HOSTS", "must be a string"),
    ("name: ep\nauth_mode: password\n", "auth_mode", "key, aml_token, none"),
    ("name: ep\ntrafic: {}\n", "trafic", "unknown field"),
    ("name: ep\nmirror_traffic: {aa: 60}\n", "mirror_traffic.aa", "at most 50"),
    ("name: ep\ntraffic: {a: 100}\n", "traffic.a", "starting with a letter"),
    (DEPLOYMENT + "instance_count: -1\n", "instance_count", "at least 0"),
    (DEPLOYMENT + "instance_count: many\n", "instance_count", "integer"),
    (DEPLOYMENT + "request_settings: {request_timeout_ms: fast}\n", "request_settings.request_timeout_ms", "integer"),
    (DEPLOYMENT + "request_settings: {max_concurrent_requests_per_instance: 0}\n",
     "request_settings.max_concurrent_requests_per_instance", "at least 1"),
    (DEPLOYMENT + "request_settings: {timeout: 3}\n", "request_settings.timeout", "unknown field"),
    (DEPLOYMENT + "readiness_probe: {period: 0}\n", "readiness_probe.period", "must be above 0, got 0"),
    (DEPLOYMENT + "liveness_probe: {failure_threshold: 0}\n", "liveness_probe.failure_threshold", "at least 1"),
    (DEPLOYMENT + "scale_settings: {type: target_utilization, polling_interval: 0.05}\n",
     "scale_settings.polling_interval", "at least 0.1 seconds"),
    (DEPLOYMENT + "model: {path: ./nowhere}\n", "model.path", "does not exist"),
    ("name: blue\nendpoint_name: ep\ncode_configuration: {code: ./no-such-folder, scoring_script: s.py}\n",
     "code_configuration.code", "does not exist"),
    (f"name: blue\nendpoint_name: ep\ncode_configuration: {{code: {ECHO_MODEL}, scoring_script: nope.py}}\n",
     "code_configuration.scoring_script", "not a file"),
    ("name: ep\ntraffic: [1, 2\n", "line", "not valid YAML"),
])
def test_errors_name_the_file_and_the_field(tmp_path, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        parse_all(read_documents([path]), {"ep"}, set())
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}"), message
    assert words in message


@pytest.mark.parametrize("script", ["../echo/score.py", str(ECHO_MODEL / "score.py")])
def test_the_scoring_script_must_lie_in_the_code_folder(tmp_path, script):
    """As on Kubernetes (serving/online_rules.py): the file exists, but outside `code`."""
    path = write(tmp_path, f"name: blue\nendpoint_name: ep\n"
                           f"code_configuration: {{code: {ECHO_MODEL}, scoring_script: {script}}}\n")
    with pytest.raises(ManifestError, match="code_configuration.scoring_script: must be a path inside the code"):
        parse_all(read_documents([path]), {"ep"}, set())


@pytest.mark.parametrize("settings, field", [
    ("{type: default, min_instances: 3}", "min_instances"),
    ("{type: default, max_instances: 4}", "max_instances"),
    ("{type: default, target_utilization_percentage: 50}", "target_utilization_percentage"),
    ("{type: default, polling_interval: 5}", "polling_interval"),
    ("{min_instances: 3}", "min_instances"),  # no type is type default
])
def test_default_scale_settings_take_only_the_type(tmp_path, settings, field):
    """Azure ML's default scale settings have only `type`: an autoscaling field there is
    refused, not silently ignored (the replicas would stay at instance_count)."""
    path = write(tmp_path, DEPLOYMENT + f"scale_settings: {settings}\n")
    with pytest.raises(ManifestError) as caught:
        parse_all(read_documents([path]), {"ep"}, set())
    message = str(caught.value)
    assert message.startswith(f"{path}: scale_settings.{field}: "), message
    assert "type: target_utilization" in message and "only 'type'" in message, message


@pytest.mark.parametrize("settings, kind", [
    ("{type: default}", "default"),
    ("{}", "default"),
    ("{type: target_utilization, min_instances: 1, max_instances: 4, polling_interval: 2}", "target_utilization"),
])
def test_scale_settings_that_azure_ml_takes_parse(tmp_path, settings, kind):
    path = write(tmp_path, DEPLOYMENT + f"scale_settings: {settings}\n")
    [deployment] = parse_all(read_documents([path]), {"ep"}, set()).deployments
    assert deployment.scale_settings.type == kind


@pytest.mark.parametrize("settings", ["{type: default}",
                                      "{type: target_utilization, min_instances: 1, max_instances: 4}"])
def test_a_shown_deployment_applies_again(tmp_path, settings):
    """`deployment show` is a complete body to apply again (loadtests' rollout scenarios
    do): default scale settings are shown as Azure ML shows them, `type` alone."""
    path = write(tmp_path, DEPLOYMENT + f"scale_settings: {settings}\n")
    [deployment] = parse_all(read_documents([path]), {"ep"}, set()).deployments
    view = deployment_view(deployment, [])
    if deployment.scale_settings.type == "default":
        assert view["scale_settings"] == {"type": "default"}
    again = tmp_path / "again.yml"
    again.write_text(yaml.safe_dump(deployment_body(view, {})))
    [shown] = parse_all(read_documents([again]), {"ep"}, set()).deployments
    assert shown.scale_settings == deployment.scale_settings


def test_references_are_checked_across_the_applied_set(tmp_path):
    write_endpoint(tmp_path, "ep", traffic={"blue": 100})
    with pytest.raises(ManifestError, match=r"traffic.blue: endpoint 'ep' has no deployment 'blue'"):
        parse_all(read_documents([tmp_path]), set(), set())
    write_deployment(tmp_path, "ep", "blue")
    endpoints, deployments = parse_all(read_documents([tmp_path]), set(), set())
    assert len(endpoints) == 1 and len(deployments) == 1
    # A deployment alone needs its endpoint to exist already.
    lone = write_deployment(tmp_path / "..", "other", "blue")
    with pytest.raises(ManifestError, match="endpoint_name: no endpoint 'other'"):
        parse_all(read_documents([lone]), set(), set())
    assert parse_all(read_documents([lone]), {"other"}, set()).deployments[0].endpoint_name == "other"


@pytest.mark.parametrize("text", [
    f"name: blue\nmodel: {{path: {ECHO_MODEL}}}\ncode_configuration: {{code: {ECHO_MODEL}, scoring_script: score.py}}\n",
    "name: blue\ninstance_count: 2\n",
    "$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json\nname: blue\n",
])
def test_a_deployment_without_endpoint_name_is_told_so(tmp_path, text):
    """It was taken for an endpoint: "model: unknown field (expected one of: auth_mode, ...)"."""
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as caught:
        parse_all(read_documents([path]), {"ep"}, set())
    assert str(caught.value) == f"{path}: endpoint_name is required: a deployment names its endpoint"


def test_an_endpoint_with_an_unknown_field_is_still_an_endpoint(tmp_path):
    path = write(tmp_path, "name: ep\nmodle: {}\n")
    with pytest.raises(ManifestError, match="modle: unknown field .*auth_mode"):
        parse_all(read_documents([path]), set(), set())


def test_an_empty_folder_and_a_missing_path_are_errors(tmp_path):
    with pytest.raises(ManifestError, match="no .yml"):
        read_documents([tmp_path])
    with pytest.raises(ManifestError, match="no such file"):
        read_documents([tmp_path / "missing.yml"])


def test_a_file_with_no_resource_is_an_error_that_names_it(tmp_path):
    """`apply -f empty.yml` used to reach the gateway and come back as the admin API's
    "'documents' must be a non-empty list", naming neither the file nor the problem."""
    empty = write(tmp_path, "# nothing here yet\n---\n")
    with pytest.raises(ManifestError) as info:
        read_documents([empty])
    assert str(info.value) == f"{empty}: holds no resource (the YAML is empty)"
    write_endpoint(tmp_path, "ep")  # beside a file with a resource, an empty one is fine
    assert [d.body["name"] for d in read_documents([tmp_path])] == ["ep"]


def test_environment_variables_keep_numbers_as_their_text(tmp_path):
    path = write(tmp_path, DEPLOYMENT + "environment_variables: {WORKERS: 4, RATIO: 0.5, NAME: x}\n")
    deployment = parse_all(read_documents([path]), {"ep"}, set()).deployments[0]
    assert deployment.environment_variables == {"WORKERS": "4", "RATIO": "0.5", "NAME": "x"}


def test_environment_variables_keep_the_text_as_written(tmp_path):
    """PyYAML's YAML 1.1 resolution read ZIP: 01234 as octal ('668'), VERSION: 1.10 as
    '1.1', 0x1F as '31', 1_000 as '1000' and 1:30 as sexagesimal '90'."""
    path = write(tmp_path, DEPLOYMENT + "environment_variables:\n  ZIP: 01234\n  VERSION: 1.10\n"
                           "  MASK: 0x1F\n  BIG: 1_000\n  TIME: 1:30\n  DAY: 2024-01-31\n  INF: .inf\n"
                           "  QUOTED: '007'\n")
    deployment = parse_all(read_documents([path]), {"ep"}, set()).deployments[0]
    assert deployment.environment_variables == {
        "ZIP": "01234", "VERSION": "1.10", "MASK": "0x1F", "BIG": "1_000", "TIME": "1:30",
        "DAY": "2024-01-31", "INF": ".inf", "QUOTED": "007"}


def test_only_environment_variables_keep_their_text(tmp_path):
    """Other fields are typed as before: instance_count: 0x2 is still the number 2."""
    path = write(tmp_path, DEPLOYMENT + "instance_count: 0x2\nrequest_settings: {request_timeout_ms: 1_000}\n"
                           "environment_variables: {VERSION: 1.10}\n")
    deployment = parse_all(read_documents([path]), {"ep"}, set()).deployments[0]
    assert deployment.instance_count == 2 and deployment.request_settings.request_timeout_ms == 1000
    assert deployment.environment_variables == {"VERSION": "1.10"}


def test_azure_ml_fields_in_a_settings_block_are_ignored(tmp_path):
    """As everywhere else in the YAML: an Azure ML field scoregate does not use passes."""
    path = write(tmp_path, DEPLOYMENT + "request_settings: {request_timeout_ms: 900, properties: {}}\n")
    deployment = parse_all(read_documents([path]), {"ep"}, set()).deployments[0]
    assert deployment.request_settings.request_timeout_ms == 900


def test_editing_the_code_or_model_in_place_makes_a_new_version(tmp_path):
    """The fix for a failed rollout is often an edit of score.py in place: re-applying the
    same YAML then did nothing (same version, its Failed verdict kept), and a good
    deployment kept running the old code until a replica restarted with the new one.
    Azure ML uploads a changed local folder as a new version; so does scoregate now."""
    code, model = tmp_path / "code", tmp_path / "model"
    (code / "__pycache__").mkdir(parents=True)
    model.mkdir()
    (code / "score.py").write_text("def init():\n    raise RuntimeError('broken')\n")
    (model / "weights.json").write_text('{"w": 1}')
    path = write(tmp_path, "name: blue\nendpoint_name: ep\nmodel: {path: ./model}\n"
                           "code_configuration: {code: ./code, scoring_script: score.py}\n")

    def version() -> str:
        return parse_all(read_documents([path]), {"ep"}, set()).deployments[0].replica_spec_hash()

    first = version()
    (code / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"written by the replica's import")
    (code / ".scoregate" / "logs").mkdir(parents=True)
    (code / ".scoregate" / "logs" / "blue-1.log").write_text("a gateway served from the code folder\n")
    assert version() == first, "what Python and the gateway write there is not an edit"
    (code / "score.py").write_text("def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n")
    fixed = version()
    assert fixed != first
    (model / "weights.json").write_text('{"w": 2, "retrained": true}')
    assert version() not in (first, fixed)
