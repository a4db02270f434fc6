"""Property-based tests for every parser the project owns: whatever the input, each
either accepts it (and what it accepts is safe) or refuses it with its own error —
never another exception."""

from __future__ import annotations

import re
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.auth import bearer_credential
from router.context import request_id_from
from router.errors import BadRequest
from router.paths import check_subpath
from serving.batch.requests import RequestError, parse_job_request
from serving.manifests import Document, ManifestError, parse
from serving.tokens import TokenIssuer

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
resource_keys = st.sampled_from([
    "name", "endpoint_name", "auth_mode", "traffic", "mirror_traffic", "model", "code_configuration",
    "environment", "instance_type", "instance_count", "request_settings", "scale_settings", "liveness_probe",
    "readiness_probe", "environment_variables", "kind", "$schema", "spec", "metadata", "rate_limit",
    "rollout_timeout_s", "resources", "node_selector"])


@FAST
@given(st.dictionaries(resource_keys, json_values, max_size=8))
def test_yaml_resources_parse_or_name_the_problem(body):
    try:
        resource = parse(Document("resource.yml", "/nonexistent", body))
    except ManifestError as exc:
        assert str(exc).startswith("resource.yml: ")
    else:
        assert re.match(r"^[A-Za-z][A-Za-z0-9-]{1,31}$", resource.name)


@FAST
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: __import__("orjson").dumps(v))))
def test_batch_job_bodies_parse_or_are_refused(raw):
    try:
        parse_job_request(raw)
    except RequestError:
        pass


@FAST
@given(st.text(max_size=300))
def test_request_ids_are_kept_only_when_plain(value):
    result = request_id_from(value)
    if result != value:
        uuid.UUID(result)
    assert len(result) <= 128 and re.fullmatch(r"[A-Za-z0-9._:\-]+", result)


@FAST
@given(st.text(max_size=300))
def test_authorization_headers(value):
    credential = bearer_credential(value)
    assert credential is None or (isinstance(credential, bytes) and credential)


@FAST
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7f), max_size=200).map(lambda s: "/" + s))
def test_sub_paths_are_safe_when_accepted(path):
    try:
        accepted = check_subpath(path)
    except BadRequest:
        return
    segments = accepted.split("/")
    assert ".." not in segments and "." not in segments
    assert "\x00" not in accepted and "\\" not in accepted
    assert not re.search(r"%(00|2[eEfF]|5[cC]|25)", accepted)


@FAST
@given(st.binary(max_size=300))
def test_tokens_never_verify_random_bytes(raw):
    assert TokenIssuer("secret").verify("ep", raw) is False


def test_a_real_token_verifies_only_for_its_endpoint():
    issuer = TokenIssuer("secret")
    token = issuer.issue("ep")["accessToken"].encode()
    assert issuer.verify("ep", token) and not issuer.verify("other", token)
    assert not TokenIssuer("another secret").verify("ep", token)
