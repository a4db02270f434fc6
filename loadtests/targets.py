"""What a load test sends to: a URL, a scoregate endpoint, or one replica directly.

The gateway's overhead is "through the gateway" minus "straight to the
replica" at the same rate, so both must be one option away: --endpoint NAME
finds the scoring URL, key and CA of the gateway in the state dir, and
--replica ENDPOINT/DEPLOYMENT finds the port of that deployment's first ready
replica (plain HTTP on 127.0.0.1, as the router itself calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

from .admin import Gateway, GatewayError, UnknownTarget, ready_replicas

JSON_TYPE = ("Content-Type", "application/json")


@dataclass(frozen=True)
class ResolvedTarget:
    """URL, extra headers and CA of a target, plus a label for reports."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    cafile: str | None = None
    label: str = ""
    default_method: str = "GET"


class BadReplica(UnknownTarget, ValueError):
    """--replica that is not ENDPOINT/DEPLOYMENT: the user's mistake (exit code 2)."""


def parse_replica(text: str) -> tuple[str, str]:
    """'ENDPOINT/DEPLOYMENT' -> (endpoint, deployment); BadReplica (a ValueError) otherwise."""
    endpoint, sep, deployment = text.strip().partition("/")
    if not sep or not endpoint or not deployment or "/" in deployment:
        raise BadReplica(f"--replica must be ENDPOINT/DEPLOYMENT, got {text!r}")
    return endpoint, deployment


def _lookup(call, *names: str) -> dict:
    """An admin GET of what the user named; a 404 is their mistake, said in the
    gateway's own words ("no endpoint 'x'"), as `scoregate endpoint show` says it."""
    try:
        return call(*names)
    except GatewayError as exc:
        if exc.status == 404:
            raise UnknownTarget(exc.detail) from None
        raise


def endpoint_target(gateway: Gateway, name: str) -> ResolvedTarget:
    """The endpoint's scoring URI on the gateway, with its primary key when it has one."""
    view = _lookup(gateway.endpoint, name)
    headers: list[tuple[str, str]] = [JSON_TYPE]
    if view.get("auth_mode", "key") == "key":
        headers.append(("Authorization", f"Bearer {gateway.keys(name)['primaryKey']}"))
    url = view.get("scoring_uri") or f"{gateway.scoring_url}/api/v1/endpoint/{name}/score"
    return ResolvedTarget(url, tuple(headers), gateway.ca_cert or None, f"gateway:{name}", "POST")


def replica_url(view: dict) -> str:
    """http://127.0.0.1:PORT/score of a deployment view's first ready replica."""
    ready = ready_replicas(view)
    if not ready or not ready[0].get("port"):
        raise GatewayError(f"deployment {view.get('endpoint_name')}/{view.get('name')} "
                           "has no ready replica")
    return f"http://127.0.0.1:{int(ready[0]['port'])}/score"


def replica_target(gateway: Gateway, endpoint: str, deployment: str) -> ResolvedTarget:
    """Straight to a replica, bypassing the gateway (no TLS, no key: as the router calls it)."""
    url = replica_url(_lookup(gateway.deployment, endpoint, deployment))
    return ResolvedTarget(url, (JSON_TYPE,), None, f"replica:{endpoint}/{deployment}", "POST")


def resolve(url: str | None = None, endpoint: str | None = None, replica: str | None = None,
            state_dir: str | None = None) -> ResolvedTarget:
    """Exactly one of url / endpoint / replica; the gateway is found through state_dir."""
    given = [x for x in (url, endpoint, replica) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of --url, --endpoint or --replica")
    if url:
        return ResolvedTarget(url)
    if endpoint:
        return endpoint_target(Gateway.from_state_dir(state_dir), endpoint)
    names = parse_replica(replica or "")  # before looking for the gateway: a usage error
    return replica_target(Gateway.from_state_dir(state_dir), *names)


def merge_headers(base: tuple[tuple[str, str], ...],
                  given: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Target headers overridden by the user's -H of the same name (case-insensitive)."""
    names = {name.lower() for name, _ in given}
    return tuple(h for h in base if h[0].lower() not in names) + tuple(given)
