"""FieldReader: typed reads of one YAML document's fields, each naming the field it refuses.

The readers themselves are serving/field_reader.py's, shared with Kubernetes custom
resources; what is YAML's own is here: a refusal is a ManifestError naming the file,
Azure ML fields scoregate does not use pass, and paths resolve against the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from ..field_reader import BaseFieldReader
from .documents import Document, ManifestError

# Fields Azure ML YAML may carry that scoregate accepts and does not use (apply names
# them in its result, except $schema, which tells the kind).
AML_IGNORED = {"$schema", "properties", "identity", "public_network_access", "kind",
               "app_insights_enabled", "egress_public_network_access", "data_collector",
               "compute", "location", "id", "type", "with_credential"}


class FieldReader(BaseFieldReader):
    """Reads one document; every refusal names its file and field."""

    ignored = AML_IGNORED

    def __init__(self, doc: Document, ignored_seen: list[str] | None = None) -> None:
        self.doc = doc
        self.ignored_seen = [] if ignored_seen is None else ignored_seen

    def ignoring(self, field: str) -> None:
        """Kept for apply's result: an Azure YAML applies, but not without a word."""
        if field != "$schema":
            self.ignored_seen.append(field)

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise ManifestError(self.doc.source, field, message)

    def strings(self, value: Any, field: str) -> dict[str, str]:
        """Every value kept as its text: YAML has always taken tags and selectors this
        leniently (string_map, which custom resources use, refuses lists and mappings)."""
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
