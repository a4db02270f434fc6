"""FieldReader: typed reads of one document's fields, each naming the field it refuses."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

from router.paths import NAME_RULE

from ..online_rules import FULL_TRAFFIC, Problem
from .documents import Document, ManifestError

# Fields Azure ML YAML may carry that scoregate accepts and does not use.
AML_IGNORED = {"$schema", "properties", "identity", "public_network_access", "kind",
               "app_insights_enabled", "egress_public_network_access", "data_collector",
               "compute", "location", "id", "type", "with_credential"}


class FieldReader:
    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def fail(self, field: str, message: str):
        raise ManifestError(self.doc.source, field, message)

    def check(self, problems: Iterable[Problem]) -> None:
        """Refuse the document for the first rule it breaks (serving/online_rules.py)."""
        for problem in problems:
            self.fail(problem.field, problem.message)

    def check_fields(self, body: dict, allowed: set[str], prefix: str = "", ignored=AML_IGNORED) -> None:
        for key in body:
            if key not in allowed and key not in ignored:
                self.fail(prefix + str(key), f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not NAME_RULE.match(value):
            self.fail(field, f"must be 2-32 letters, digits or '-', starting with a letter; got {value!r}")
        return value

    def integer(self, value: Any, field: str, minimum: int, maximum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            self.fail(field, f"must be at least {minimum}{upper}, got {value}")
        return value

    def number(self, value: Any, field: str, minimum: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, got {value!r}")
        if value < minimum:
            self.fail(field, f"must be at least {minimum:g}, got {value}")
        return value

    def mapping(self, value: Any, field: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, got {type(value).__name__}")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, f"must be a non-empty string, got {value!r}")
        return value

    def strings(self, value: Any, field: str) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.mapping(value, field).items()}

    def path(self, value: Any, field: str, *, allow_http: bool = False) -> str:
        """A local path (relative to the YAML file) or file:// URI that must exist;
        with allow_http, an http(s):// URI is kept as is (downloaded at rollout)."""
        text = self.string(value, field)
        if text.startswith(("http://", "https://")):
            if not allow_http:
                self.fail(field, "must be a local path or a file:// URI")
            return text
        if "://" in text and not text.startswith("file://"):
            self.fail(field, "must be a local path, a file:// URI" + (" or an http(s):// URI" if allow_http else ""))
        text = text.removeprefix("file://")
        resolved = (Path(self.doc.base_dir) / text).resolve()
        if not resolved.exists():
            self.fail(field, f"{text} does not exist (resolved to {resolved})")
        return str(resolved)

    def weights(self, value: Any, field: str) -> dict[str, int]:
        table = self.mapping(value, field)
        out = {}
        for key, weight in table.items():
            self.name(key, f"{field}.{key}")
            out[key] = self.integer(weight, f"{field}.{key}", 0, FULL_TRAFFIC)
        return out

    def dataclass_from(self, kind, value: Any, field: str, numbers: tuple[str, ...] = ()):
        """A settings block into `kind`: integers, `numbers` may be fractional, `type` a string."""
        body = self.mapping(value, field)
        names = {f.name for f in fields(kind)}
        self.check_fields(body, names, prefix=f"{field}.")
        values = {}
        for key, raw in body.items():
            if key not in names:
                continue  # an Azure ML field check_fields let pass: accepted and not used
            if key == "type":
                values[key] = self.string(raw, f"{field}.{key}")
            elif key in numbers:
                values[key] = self.number(raw, f"{field}.{key}", 0)
            else:
                values[key] = self.integer(raw, f"{field}.{key}", 0)
        return kind(**values)
