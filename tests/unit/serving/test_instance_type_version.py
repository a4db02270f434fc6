"""An instance type's content is part of a deployment's version (serving.resources):
editing the type is a new spec hash, editing another type is not, and a deployment read
back from a stored dict keeps the content it was made with."""

from __future__ import annotations

from serving.resources import DEFAULT_INSTANCE, Deployment, InstanceType, with_instance_type

SMALL = InstanceType("cpu-small", {"pool": "cpu"}, {"cpu": "500m"}, {"cpu": "1", "memory": "1Gi"})
BLUE = Deployment("blue", "iris", instance_type="cpu-small")


def test_the_hash_follows_the_content_of_the_named_type_only():
    before = with_instance_type(BLUE, [SMALL])
    edited = InstanceType("cpu-small", {"pool": "cpu-v2"}, SMALL.requests, SMALL.limits)
    other_edited = InstanceType("gpu-t4", {"pool": "gpu-2"})
    assert before.resolved_instance_type == SMALL
    assert with_instance_type(BLUE, [edited]).replica_spec_hash() != before.replica_spec_hash()
    assert with_instance_type(BLUE, [SMALL, other_edited]).replica_spec_hash() == before.replica_spec_hash()
    assert with_instance_type(before, [SMALL]) is before  # unchanged: the same object


def test_unresolved_and_default_types():
    assert with_instance_type(BLUE, []).resolved_instance_type is None  # the rollout names it
    default = Deployment("green", "iris")
    assert with_instance_type(default, []).resolved_instance_type == DEFAULT_INSTANCE
    own_default = InstanceType(DEFAULT_INSTANCE.name, limits={"memory": "8Gi"})
    assert with_instance_type(default, [own_default]).resolved_instance_type == own_default


def test_a_stored_version_keeps_the_content_it_was_made_with():
    made = with_instance_type(BLUE, [SMALL])
    stored = Deployment.from_dict(made.to_dict())  # as last-good is kept (SQLite, status.lastGood)
    assert stored.resolved_instance_type == SMALL
    assert stored.replica_spec_hash() == made.replica_spec_hash()
    assert stored == BLUE  # == compares what was applied, not what the type resolved to
