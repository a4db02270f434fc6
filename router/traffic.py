"""Pick deployment: traffic split, the `azureml-model-deployment` pin, and mirroring.

Runs after router.auth and before admission. The weighted choice uses an injected
`rng` so tests can check proportions deterministically. Mirroring decides here whether
a copy goes to a shadow deployment; the copy is sent by router.mirroring.
"""

from __future__ import annotations

import random

from .errors import DeploymentNotFound, NoReadyReplica, NoTrafficDeployment
from .routing_table import DeploymentRoute, EndpointRoute

PIN_HEADER = "azureml-model-deployment"


class DeploymentPicker:
    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, endpoint: EndpointRoute, pinned_name: str | None) -> tuple[DeploymentRoute, bool]:
        """Return (deployment, pinned). A pin may name a deployment with 0% traffic."""
        if pinned_name:
            deployment = endpoint.deployments.get(pinned_name)
            if deployment is None:
                raise DeploymentNotFound(
                    f"endpoint '{endpoint.name}' has no deployment '{pinned_name[:64]}'"
                )
            return deployment, True
        total = 0
        for _, weight in endpoint.traffic:
            total += weight
        if total <= 0:
            if endpoint.unavailable_reason:
                raise NoReadyReplica(endpoint.unavailable_reason)
            raise NoTrafficDeployment(
                f"endpoint '{endpoint.name}' has no deployment with traffic; "
                f"set traffic or pin one with the '{PIN_HEADER}' header"
            )
        point = self._rng.random() * total
        for name, weight in endpoint.traffic:
            point -= weight
            if point < 0:
                return endpoint.deployments[name], False
        name = endpoint.traffic[-1][0]
        return endpoint.deployments[name], False

    def mirror_targets(self, endpoint: EndpointRoute, chosen: str) -> list[DeploymentRoute]:
        """Deployments that get a copy of this request (never the one serving it)."""
        if not endpoint.mirror_traffic:
            return []
        targets = []
        for name, percent in endpoint.mirror_traffic:
            if name != chosen and self._rng.random() * 100 < percent:
                deployment = endpoint.deployments.get(name)
                if deployment is not None:
                    targets.append(deployment)
        return targets
