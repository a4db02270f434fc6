"""A running scoregate gateway, seen from outside: gateway.json plus the admin API.

loadtests must not import serving (.importlinter), and a load tester should
see the gateway the way any client does, so this reads the state dir's
gateway.json itself and speaks plain HTTP+JSON with urllib.  Calls are
blocking and short (bounded by a timeout); scenarios run them in a thread.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_ENV = "SCOREGATE_STATE_DIR"
DEFAULT_STATE_DIR = ".scoregate"
TIMEOUT_S = 15.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class GatewayError(RuntimeError):
    """The gateway is missing, unreachable, or refused an admin call.

    `status` and `detail` are the HTTP status and the API's own message of a
    refused call, so a caller can tell "no such endpoint" from a failure.
    """

    exit_code = 1

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or message


class UnknownTarget(GatewayError):
    """The user named an endpoint or deployment the gateway doesn't have (exit code 2)."""

    exit_code = 2


class GatewayNotRunning(GatewayError):
    """No gateway.json, or nobody answers at its admin URL (exit code 3, like scoregate)."""

    exit_code = 3


def resolve_state_dir(state_dir: str | os.PathLike | None) -> Path:
    """--state-dir, else $SCOREGATE_STATE_DIR, else ./.scoregate (as the scoregate CLI)."""
    return Path(state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR).resolve()


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


@dataclass(frozen=True)
class Gateway:
    """Where a gateway listens and how to call its admin API."""

    admin_url: str
    admin_token: str
    scoring_url: str
    ca_cert: str
    pid: int
    state_dir: str = ""

    @classmethod
    def from_state_dir(cls, state_dir: str | os.PathLike | None = None) -> "Gateway":
        root = resolve_state_dir(state_dir)
        try:
            data = json.loads((root / "gateway.json").read_text())
            return cls(data["admin_url"].rstrip("/"), data["admin_token"],
                       data["scoring_url"].rstrip("/"), data.get("ca_cert") or "",
                       int(data.get("pid") or 0), str(root))
        except FileNotFoundError:
            raise GatewayNotRunning(
                f"no running gateway found in {root} (no gateway.json; start one with "
                "`scoregate serve`, or point --state-dir / SCOREGATE_STATE_DIR at it)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GatewayError(f"cannot read {root / 'gateway.json'}: {exc}") from None

    @property
    def is_local(self) -> bool:
        """Whether the admin API is on this machine (replica pids mean something here)."""
        return urllib.parse.urlsplit(self.admin_url).hostname in LOOPBACK

    # -- raw calls ----------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None,
             timeout: float = TIMEOUT_S):
        """One admin API call under /api/v1; the decoded JSON answer, or GatewayError."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.admin_url}/api/v1{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.admin_token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            payload = exc.read().decode(errors="replace")
            try:
                message = json.loads(payload).get("message") or payload
            except (ValueError, AttributeError):
                message = payload
            raise GatewayError(f"{method} {path}: {exc.code} {message}".strip(),
                               exc.code, str(message).strip()) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GatewayNotRunning(
                f"the gateway's admin API at {self.admin_url} does not answer ({reason})") from None

    # -- the few resources loadtests needs ------------------------------------------
    def endpoint(self, name: str) -> dict:
        return self.call("GET", f"/endpoints/{_q(name)}")

    def keys(self, name: str) -> dict:
        return self.call("GET", f"/endpoints/{_q(name)}/keys")

    def deployment(self, endpoint: str, name: str) -> dict:
        return self.call("GET", f"/endpoints/{_q(endpoint)}/deployments/{_q(name)}")

    def apply(self, documents: list[dict]) -> dict:
        """POST /apply with [{"source", "base_dir", "body"}] documents."""
        return self.call("POST", "/apply", {"documents": documents})


def ready_replicas(view: dict) -> list[dict]:
    """The READY replicas of a deployment view, oldest first (as the API lists them)."""
    return [r for r in view.get("replicas") or [] if r.get("state") == "ready"]


def live_replicas(view: dict) -> list[dict]:
    """Replicas starting or ready: what will serve soon, for replica counts."""
    return [r for r in view.get("replicas") or [] if r.get("state") in ("starting", "ready")]


def main_deployment(endpoint_view: dict) -> str:
    """The deployment with the largest traffic share (else the first one)."""
    traffic = endpoint_view.get("traffic") or {}
    if traffic and max(traffic.values()) > 0:
        return max(sorted(traffic), key=lambda name: traffic[name])
    names = endpoint_view.get("deployments") or []
    if not names:
        raise GatewayError(f"endpoint {endpoint_view.get('name')!r} has no deployment")
    return names[0]
