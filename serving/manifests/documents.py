"""Reading YAML files into Documents, and the error every manifest problem becomes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml


class ManifestError(ValueError):
    """A resource file that cannot be applied; str() names the file and the field."""

    def __init__(self, source: str, field: str | None, message: str) -> None:
        self.source, self.field, self.message = source, field, message
        where = f"{source}: {field}: " if field else f"{source}: "
        super().__init__(where + message)


@dataclass(frozen=True)
class Document:
    """One YAML document and where it came from (relative paths resolve against base_dir)."""

    source: str
    base_dir: str
    body: dict


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Read every *.yml / *.yaml file named, or found (recursively) under a folder."""
    documents: list[Document] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
            if not files:
                raise ManifestError(str(path), None, "no .yml or .yaml file in this folder")
        elif path.is_file():
            files = [path]
        else:
            raise ManifestError(str(path), None, "no such file or folder")
        found = [document for file in files for document in _read_file(file)]
        if not found:
            raise ManifestError(str(path), None, "holds no resource (the YAML is empty)")
        documents.extend(found)
    return documents


# Fields whose values are a process's environment: text, kept as written.
TEXT_VALUED = ("environment_variables",)
_STR = "tag:yaml.org,2002:str"
# What a plain scalar read as text instead: numbers and dates. true/false and null stay
# themselves, so the readers still refuse them ("quote it"), as custom resources do.
_AS_TEXT = {f"tag:yaml.org,2002:{kind}" for kind in ("int", "float", "timestamp")}


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the text of `environment_variables` values: YAML 1.1 would
    turn ZIP: 01234 into 668 (octal), 1.10 into 1.1, 0x1F into 31, 1:30 into 90. Every
    other field is typed as safe_load types it."""

    def construct_document(self, node):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value in TEXT_VALUED and isinstance(value, yaml.MappingNode):
                    _keep_text(value)
        return super().construct_document(node)


def _keep_text(mapping: yaml.MappingNode) -> None:
    """Plain scalars of the mapping that would resolve to a number or a date are read as
    the string they spell (the scalar node holds its text as written)."""
    for _, value in mapping.value:
        if isinstance(value, yaml.ScalarNode) and value.style is None and value.tag in _AS_TEXT:
            value.tag = _STR


def _read_file(file: Path) -> list[Document]:
    try:
        loaded = list(yaml.load_all(file.read_text(encoding="utf-8"), Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise ManifestError(str(file), where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(str(file), None, f"cannot read: {exc}") from None
    out = []
    for body in loaded:
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ManifestError(str(file), None, "a resource must be a YAML mapping")
        out.append(Document(str(file), str(file.resolve().parent), body))
    return out
