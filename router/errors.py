"""The refusals of the data path: one class per status code, each with its own `code`.

Every error a caller can get is raised as a ScoringError and turned into a JSON body
`{"code", "message", "request_id"}` by router.handlers; `code` doubles as the metric
label, so the set is small and fixed.
"""

from __future__ import annotations


class ScoringError(Exception):
    status = 500
    code = "InternalError"
    retry_after_s: int | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ScoringError):
    status, code = 400, "BadRequest"


class Unauthorized(ScoringError):
    """401 names the scheme to use (RFC 9110 requires the header on every 401)."""

    status, code = 401, "Unauthorized"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class EndpointNotFound(ScoringError):
    status, code = 404, "EndpointNotFound"


class DeploymentNotFound(ScoringError):
    status, code = 404, "DeploymentNotFound"


class NoTrafficDeployment(ScoringError):
    status, code = 404, "NoDeploymentWithTraffic"


class RequestTimeout(ScoringError):
    status, code = 408, "ClientRequestTimeout"


class PayloadTooLarge(ScoringError):
    status, code = 413, "PayloadTooLarge"


class ModelError(ScoringError):
    """The model answered with a non-2xx status; its body is passed on (424)."""

    status, code = 424, "ModelError"


class TooManyRequests(ScoringError):
    status, code = 429, "TooManyRequests"
    retry_after_s = 1


class UpstreamConnectionError(ScoringError):
    status, code = 502, "ModelConnectionError"


class NoReadyReplica(ScoringError):
    status, code = 503, "NoReadyReplica"
    retry_after_s = 1


class UpstreamTimeout(ScoringError):
    status, code = 504, "ModelTimeout"
