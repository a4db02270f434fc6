"""`scoregate apply --wait`: poll the deployments just applied until each has settled.

Why: `apply` returns once the desired state is stored, as `kubectl apply` does, but a
user coming from `az ml online-deployment create` expects to learn there whether the
deployment came up. A deployment has settled when the rollout of its current version
(the `version` of `deployment show`, which the rollout record names) has finished:
Failed (its stage and reason reported), or Succeeded with as many replicas ready as the
controller wants. A re-applied, unchanged deployment has settled at once, unless its
rollout had failed: the apply then started a new attempt (`attempts`), and the failed
rollout of the attempt before does not count. One whose rollout record predates
versioned records is judged by its provisioning state alone.
"""

from __future__ import annotations

import time

from .client import AdminClient, CliError, api_path

_FINISHED = ("Succeeded", "Failed")


def wait_for_rollouts(client: AdminClient, deployments: list[tuple[str, str]], timeout_s: float,
                      attempts: dict[tuple[str, str], str] | None = None) -> list[dict]:
    """One outcome per (endpoint, deployment), in order; never waits past timeout_s.
    `attempts`: the attempt whose rollout counts, for deployments the apply tried again."""
    attempts = attempts or {}
    deadline = time.monotonic() + timeout_s
    outcomes: dict[tuple[str, str], dict] = {}
    delay = 0.2
    while True:
        for key in deployments:
            if key not in outcomes or not outcomes[key]["settled"]:
                outcomes[key] = _outcome(client, *key, attempts.get(key))
        if all(o["settled"] for o in outcomes.values()) or time.monotonic() >= deadline:
            break
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)
    result = []
    for key in deployments:
        outcome = outcomes[key]
        if not outcome.pop("settled"):
            outcome["timed_out"] = True
            outcome["reason"] = (f"not settled after {timeout_s:g} s: {outcome['provisioning_state']}, "
                                 f"{outcome['ready_replicas']} of {outcome['desired_replicas']} replicas ready")
        result.append(outcome)
    return result


def failures(outcomes: list[dict]) -> str:
    """One line for every deployment that did not roll out ("" when all did)."""
    lines = []
    for o in outcomes:
        if o.get("timed_out"):
            lines.append(f"{o['endpoint_name']}/{o['name']}: {o['reason']}")
        elif o["provisioning_state"] != "Succeeded":
            stage = f" at {o['failed_stage']}" if o.get("failed_stage") else ""
            reason = f": {o['reason']}" if o.get("reason") else ""
            lines.append(f"{o['endpoint_name']}/{o['name']}: {o['provisioning_state']}{stage}{reason}")
    return "; ".join(lines)


def _outcome(client: AdminClient, endpoint: str, name: str, attempt: str | None = None) -> dict:
    base = {"name": name, "endpoint_name": endpoint}
    try:
        view = client.get(api_path("endpoints", endpoint, "deployments", name))
    except CliError as exc:  # deleted meanwhile, or the gateway went away
        return {**base, "provisioning_state": "Unknown", "reason": str(exc), "settled": True}
    rollout = view.get("rollout") or {}
    state = view["provisioning_state"]
    this_version = rollout.get("version", view["version"]) == view["version"] \
        and (attempt is None or rollout.get("attempt", "") == attempt)
    wanted = view.get("desired_replicas", view["instance_count"])
    settled = this_version and state in _FINISHED and (state == "Failed" or view["ready_replicas"] >= wanted)
    outcome = {**base, "provisioning_state": state if this_version else "Updating", "version": view["version"],
               "ready_replicas": view["ready_replicas"], "desired_replicas": wanted, "settled": settled}
    if state == "Failed" and this_version:
        outcome.update(failed_stage=rollout.get("failed_stage"), reason=rollout.get("reason"),
                       rolled_back=bool(rollout.get("rolled_back")))
    return outcome
