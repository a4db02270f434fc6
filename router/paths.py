"""Routing input checks: names and the sub-paths forwarded to a model.

Endpoint and deployment names follow Azure ML's rule (NAME_RULE, the one definition:
the control plane's manifests check names with it too); a name the routing table does
not know is told whether it could be a name at all. A sub-path under an endpoint is
forwarded byte for byte, so it must not carry what could make a model server (or a
proxy behind it) see another path than the one routed: NUL or control characters,
backslashes, dot segments (`..`, `.`, also percent-encoded), or encoded separators'
double encoding tricks (`%25` followed by a hex pair, `%2F`).
"""

from __future__ import annotations

import re

from .errors import BadRequest

NAME_RULE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}\Z")
_ALLOWED = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_FORBIDDEN_ENCODED = {"%00", "%2f", "%5c", "%2e"}


def check_subpath(raw: str) -> str:
    """The raw sub-path if it is safe to forward unchanged, else BadRequest."""
    if len(raw) > 2048 or not _ALLOWED.match(raw):
        raise BadRequest("the path has characters that are not allowed")
    for token in _PERCENT.findall(raw):
        lowered = token.lower()
        if lowered in _FORBIDDEN_ENCODED or lowered.startswith("%0") or lowered == "%7f":
            raise BadRequest("the path has an encoded character that is not allowed")
        if lowered == "%25":
            raise BadRequest("double percent-encoding is not allowed in the path")
    if "%" in _PERCENT.sub("", raw):
        raise BadRequest("the path has a malformed percent-encoding")
    for segment in raw.split("/"):
        if segment in (".", ".."):
            raise BadRequest("dot segments are not allowed in the path")
    return raw
