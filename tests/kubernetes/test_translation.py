"""Custom resources ⇄ serving.resources, names, pod verdicts: pure functions, table-driven."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from serving.backends.kubernetes import names
from serving.backends.kubernetes.translation import (
    CustomResourceError, InstanceTypeSpec, deployment_from_custom_resource, deployment_to_custom_resource,
    endpoint_from_custom_resource, endpoint_to_custom_resource, instance_type_from_custom_resource,
    instance_type_to_custom_resource)
from serving.resources import ProbeSettings, RequestSettings

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
ENDPOINT, DEPLOYMENT = [d for d in yaml.safe_load_all((SAMPLES / "iris-endpoint.yaml").read_text()) if d]


def test_sample_deployment_reads_in_snake_case():
    d = deployment_from_custom_resource(DEPLOYMENT)
    assert (d.endpoint_name, d.name, d.instance_type, d.instance_count) == ("iris", "blue", "cpu-small", 2)
    assert d.model_path == "https://models.example.com/iris/blue/model.tar.gz"
    assert d.request_settings == RequestSettings(5000, 1, 500)
    assert d.readiness_probe == ProbeSettings(initial_delay=5, period=5, timeout=2, success_threshold=1,
                                              failure_threshold=3)
    assert d.scale_settings.max_instances == 4 and d.environment_variables == {"LOG_LEVEL": "info"}


def test_round_trips_keep_every_field():
    d = deployment_from_custom_resource(DEPLOYMENT)
    assert deployment_from_custom_resource(deployment_to_custom_resource(d, "team-a")) == d
    e = endpoint_from_custom_resource(ENDPOINT)
    assert endpoint_from_custom_resource(endpoint_to_custom_resource(e, "team-a")) == e
    spec = InstanceTypeSpec("gpu", {"pool": "gpu"}, {"cpu": "4"}, {"nvidia.com/gpu": "1"})
    assert instance_type_from_custom_resource(instance_type_to_custom_resource(spec)) == spec


def test_custom_server_environment_reads_in_snake_case():
    [custom, *_] = [d for d in yaml.safe_load_all((SAMPLES / "custom-server-deployment.yaml").read_text()) if d]
    env = deployment_from_custom_resource(custom).environment
    assert env["inference_config"]["scoring_route"] == {"port": 8080, "path": "/v2/models/iris/infer"}


def with_spec(obj: dict, **changes) -> dict:
    obj = copy.deepcopy(obj)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = obj["spec"]
        for part in path:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return obj


BAD_DEPLOYMENTS = [
    ({"instanceCount": -1}, "spec.instanceCount: must be at least 0 and at most 64, got -1"),
    ({"endpointName": "9lives"}, "spec.endpointName: must be 2-32 letters"),
    ({"model__path": "./model"}, "spec.model.path: must be an http(s):// or file:// URI"),
    ({"codeConfiguration__scoringScript": "../../etc/passwd"}, "spec.codeConfiguration.scoringScript: must be a path"),
    ({"requestSettings__maxConcurrentRequestsPerInstance": 0},
     "spec.requestSettings.maxConcurrentRequestsPerInstance: must be at least 1"),
    ({"readinessProbe__perod": 3}, "spec.readinessProbe.perod: unknown field"),
    ({"environmentVariables": {"1BAD": "x"}}, "spec.environmentVariables.1BAD: must be a valid environment"),
    ({"instanceType": "GPU_Large"}, "spec.instanceType: must name an InstanceType object"),
    ({"scaleSettings__minInstances": 9}, "spec.scaleSettings.minInstances: must not exceed maxInstances"),
    ({"environment": {"inferenceConfig": {"livenessRoute": {"port": 1, "path": "/"}}}},
     "spec.environment.inferenceConfig.readinessRoute.port: must be an integer"),
    # The rules shared with YAML (serving/online_rules.py): a key the user chose is kept as written...
    ({"environmentVariables": {"MY-VAR_X": "x"}}, "spec.environmentVariables.MY-VAR_X: must be a valid environment"),
    ({"livenessProbe__period": 0}, "spec.livenessProbe.period: must be above 0, got 0"),
    ({"readinessProbe__failureThreshold": 0}, "spec.readinessProbe.failureThreshold: must be at least 1, got 0"),
    # ... and these were checked for YAML only before.
    ({"scaleSettings__targetUtilizationPercentage": 0},
     "spec.scaleSettings.targetUtilizationPercentage: must be from 1 to 100"),
    ({"scaleSettings__pollingInterval": 0}, "spec.scaleSettings.pollingInterval: must be at least 0.1 seconds"),
    ({"environment": {"image": "mlserver:1", "inferenceConfig": {
        "livenessRoute": {"port": 8080, "path": "/v2/health/live"},
        "readinessRoute": {"port": 8080, "path": "/v2/health/ready"},
        "scoringRoute": {"port": 8080, "path": "v2/models/iris/infer"}}}},
     "spec.environment.inferenceConfig.scoringRoute.path: must start with '/'"),
]


@pytest.mark.parametrize("changes, message", BAD_DEPLOYMENTS, ids=[m.split(":")[0] for _, m in BAD_DEPLOYMENTS])
def test_invalid_deployments_name_the_object_and_the_field(changes, message):
    with pytest.raises(CustomResourceError) as caught:
        deployment_from_custom_resource(with_spec(DEPLOYMENT, **changes))
    assert str(caught.value).startswith("OnlineDeployment team-a/iris-blue: ")
    assert message in str(caught.value)


@pytest.mark.parametrize("changes, message", [
    ({"traffic": {"blue": 50}}, "spec.traffic: weights must add up to 100"),
    ({"authMode": "token"}, "spec.authMode: must be one of key, aml_token, none"),
    ({"mirrorTraffic": {"blue": 10}}, "spec.mirrorTraffic.blue: a deployment cannot get both"),
])
def test_invalid_endpoints_name_the_object_and_the_field(changes, message):
    with pytest.raises(CustomResourceError) as caught:
        endpoint_from_custom_resource(with_spec(ENDPOINT, **changes))
    assert str(caught.value).startswith("OnlineEndpoint team-a/iris: ") and message in str(caught.value)


def test_instance_type_quantities_are_checked():
    obj = {"kind": "InstanceType", "metadata": {"name": "big"},
           "spec": {"resources": {"limits": {"memory": "lots"}}}}
    with pytest.raises(CustomResourceError, match=r"InstanceType big: spec.resources.limits.memory: is not a Kubernetes quantity"):
        instance_type_from_custom_resource(obj)


@pytest.mark.parametrize("endpoint, deployment", [("iris", "blue"), ("Iris", "Blue"), ("a" * 32, "b" * 32)])
def test_object_names_are_valid_and_distinct(endpoint, deployment):
    import re
    rule = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    made = [names.service_name(endpoint, deployment), names.version_name(endpoint, deployment, "0123456789ab"),
            names.keys_secret_name(endpoint)]
    for name in made:
        assert rule.match(name) and len(name) <= 63, name
    assert names.service_name(endpoint, deployment) != names.service_name(endpoint.lower(), deployment.lower()) \
        or endpoint == endpoint.lower()


@pytest.mark.parametrize("name", ["1ST", "MY-VAR", "A B", "X=Y"])
def test_batch_deployment_environment_variable_names_are_checked(name):
    # The rule online deployments and batch YAML keep (serving/online_rules.py): a name a
    # process environment cannot take is refused here, not at a worker's start.
    from serving.backends.kubernetes.batch_translation import batch_deployment_from_custom_resource

    obj = {"apiVersion": "scoregate.io/v1alpha1", "kind": "BatchDeployment",
           "metadata": {"name": "iris-batch-classifier", "namespace": "team-a"},
           "spec": {"endpointName": "iris-batch", "deploymentName": "classifier",
                    "codeConfiguration": {"code": "https://example.com/code.tar.gz", "scoringScript": "score.py"},
                    "environmentVariables": {"GOOD_NAME": "1", name: "2"}}}
    with pytest.raises(CustomResourceError, match=f"spec.environmentVariables.{name}: must be a valid environment"):
        batch_deployment_from_custom_resource(obj)
    del obj["spec"]["environmentVariables"][name]
    assert batch_deployment_from_custom_resource(obj).deployment.environment_variables == {"GOOD_NAME": "1"}


@pytest.mark.parametrize("resources, message", [
    ({"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}},
     "spec.resources.requests.cpu: 2 is more than its limit (1500m)"),
    ({"requests": {"memory": "2Gi"}, "limits": {"memory": "2G"}},
     "spec.resources.requests.memory: 2Gi is more than its limit (2G)"),
    ({"requests": {"nvidia.com/gpu": "1"}}, "spec.resources.requests.nvidia.com/gpu: nvidia.com/gpu cannot be"
                                            " overcommitted: set spec.resources.limits.nvidia.com/gpu too"),
    ({"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}},
     "the request (1) must equal the limit (2)"),
])
def test_instance_type_resources_a_pod_could_not_have_are_refused(resources, message):
    """The API server refuses a Deployment whose container requests more than its limit (or
    a GPU below its limit): the InstanceType is refused instead, naming the field, so its
    deployments keep their last valid version rather than rolling out one that cannot exist."""
    obj = {"kind": "InstanceType", "metadata": {"name": "big"}, "spec": {"resources": resources}}
    with pytest.raises(CustomResourceError) as caught:
        instance_type_from_custom_resource(obj)
    assert str(caught.value).startswith("InstanceType big: ") and message in str(caught.value)


@pytest.mark.parametrize("resources", [
    {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    {"requests": {"cpu": "0.5", "memory": "1073741824"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
    {"requests": {"cpu": "4"}, "limits": {"nvidia.com/gpu": "1"}},
    {"requests": {"nvidia.com/gpu": "1", "memory": "1e3"}, "limits": {"nvidia.com/gpu": "1", "memory": "1k"}},
])
def test_instance_type_resources_kubernetes_accepts_are_accepted(resources):
    obj = {"kind": "InstanceType", "metadata": {"name": "ok"}, "spec": {"resources": resources}}
    assert instance_type_from_custom_resource(obj).requests == resources["requests"]
