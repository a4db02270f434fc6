"""The body of `POST /api/v1/batch/{endpoint}/jobs`, checked before anything is stored.

Everything wrong with a request is found here or in serving.batch.inputs and answered
with a JSON error naming the problem; only a request that passed both is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from router.paths import NAME_RULE  # online and batch names share one namespace and one rule

INPUT_TYPES = ("uri_folder", "uri_file", "tabular", "inline")
BODY_FIELDS = ("input", "deployment_name", "settings")
_INPUT_FIELDS = {"uri_folder": ("type", "path", "mode"), "uri_file": ("type", "path", "mode"),
                 "tabular": ("type", "path", "mode"), "inline": ("type", "data")}


class RequestError(Exception):
    """A refused request: HTTP status, error code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str, code: str = "ValidationError") -> RequestError:
    return RequestError(422, code, message)


@dataclass(frozen=True)
class JobRequest:
    input_type: str
    path: str | None = None
    data: list | None = None
    deployment_name: str | None = None
    settings: dict = field(default_factory=dict)


def parse_job_request(raw: bytes) -> JobRequest:
    if not raw.strip():
        raise RequestError(400, "InvalidJson", "the body is empty; send a JSON object with 'input'")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, "InvalidJson", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "InvalidJson", f"the body must be a JSON object, got {type(body).__name__}")
    for key in body:
        if key not in BODY_FIELDS:
            raise invalid(f"{key}: unknown field (expected: {', '.join(BODY_FIELDS)})")
    if "input" not in body or body["input"] is None:
        raise invalid("input: is required, e.g. {\"type\": \"uri_folder\", \"path\": \"images\"}",
                      "InputMissing")
    spec = body["input"]
    if not isinstance(spec, dict):
        raise invalid(f"input: must be an object with type and path (or data), got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in INPUT_TYPES:
        raise invalid(f"input.type: must be one of {', '.join(INPUT_TYPES)}, got {kind!r}")
    for key in spec:
        if key not in _INPUT_FIELDS[kind]:
            raise invalid(f"input.{key}: unknown field for {kind} input (expected: {', '.join(_INPUT_FIELDS[kind])})")
    deployment = body.get("deployment_name")
    if deployment is not None and (not isinstance(deployment, str) or not NAME_RULE.match(deployment)):
        raise invalid(f"deployment_name: must be a deployment name, got {deployment!r}")
    settings = body.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise invalid(f"settings: must be an object, got {type(settings).__name__}")
    if kind == "inline":
        data = spec.get("data")
        if not isinstance(data, list):
            raise invalid(f"input.data: must be a list of rows, got {type(data).__name__}")
        if not data:
            raise invalid("input.data: is empty; nothing to score", "InputEmpty")
        return JobRequest(kind, data=data, deployment_name=deployment, settings=settings)
    path = spec.get("path")
    if not isinstance(path, str) or not path.strip():
        raise invalid(f"input.path: must be a non-empty string, got {path!r}")
    return JobRequest(kind, path=path, deployment_name=deployment, settings=settings)
