"""Names and labels of the Kubernetes objects scoregate creates.

Kubernetes names are lowercase DNS labels of at most 63 characters, while scoregate names
may have capitals and up to 32 characters: a name that lowercasing or truncation would
change gets a short hash of the original appended, so two scoregate names never map to
one Kubernetes name. Label values keep the exact scoregate names.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "scoregate.io"
VERSION = "v1"
MANAGER = "scoregate"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ENDPOINT = "scoregate.io/endpoint"
LABEL_DEPLOYMENT = "scoregate.io/deployment"
LABEL_SPEC_HASH = "scoregate.io/spec-hash"

APP_NAME = "scoregate-model"
COMPONENT_REPLICA = "model-replica"
COMPONENT_KEYS = "endpoint-keys"

# The ReplicaSet controller removes pods with the lowest deletion cost first: this is how
# a scale-down by one removes the very pod the controller chose.
ANNOTATION_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
ANNOTATION_STOP_REQUESTED = "scoregate.io/stop-requested"
ANNOTATION_INSTANCE_TYPE = "scoregate.io/instance-type"
# On an OnlineDeployment, set by its user: a new value asks for a new attempt of its version
# if that version's rollout failed (`kubectl apply` of an unchanged object changes nothing).
ANNOTATION_RETRY = "scoregate.io/retry"
STOP_DELETION_COST = "-1000"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str, max_length: int = 63) -> str:
    """A valid DNS-1035 label for `text`, unique for distinct inputs."""
    lowered = _NOT_DNS.sub("-", text.lower()).strip("-") or "x"
    if lowered == text and len(text) <= max_length:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{lowered[: max_length - 7].rstrip('-')}-{digest}"


def service_name(endpoint: str, deployment: str) -> str:
    """One Service per scoregate deployment: every version of it stands behind it."""
    return dns_label(f"{endpoint}-{deployment}")


def version_name(endpoint: str, deployment: str, spec_hash: str) -> str:
    """One apps/v1 Deployment per version (spec hash) of a scoregate deployment."""
    return f"{dns_label(f'{endpoint}-{deployment}', 54)}-{spec_hash[:8]}"


def keys_secret_name(endpoint: str) -> str:
    return dns_label(f"scoregate-keys-{endpoint}")


def deployment_labels(endpoint: str, deployment: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: service_name(endpoint, deployment),
        LABEL_COMPONENT: COMPONENT_REPLICA,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_ENDPOINT: endpoint,
        LABEL_DEPLOYMENT: deployment,
    }


def replica_labels(endpoint: str, deployment: str, spec_hash: str) -> dict[str, str]:
    return {**deployment_labels(endpoint, deployment), LABEL_SPEC_HASH: spec_hash}


def selector_of(endpoint: str, deployment: str, spec_hash: str | None = None) -> dict[str, str]:
    """The immutable label selector: only the labels that identify, never the cosmetic ones."""
    selector = {LABEL_ENDPOINT: endpoint, LABEL_DEPLOYMENT: deployment}
    if spec_hash is not None:
        selector[LABEL_SPEC_HASH] = spec_hash
    return selector


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


MANAGED_REPLICAS_SELECTOR = label_selector({LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: COMPONENT_REPLICA})
MANAGED_KEYS_SELECTOR = label_selector({LABEL_MANAGED_BY: MANAGER, LABEL_COMPONENT: COMPONENT_KEYS})
