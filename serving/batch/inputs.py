"""Turn a job's input into its items, refusing anything outside the data roots.

Paths may be absolute or relative to a data root (`scoregate serve --data-root DIR`),
and must resolve — symlinks followed — inside one. `..` is refused outright, as is
every URI scheme but file:// without a host: a job never makes a network request.
Items are fixed when the job is accepted (stored with it), so a restart scores exactly
the same list.

A folder is refused only when the job cannot be run at all (the folder itself unreadable,
outside the roots, or without one file that can be scored). One bad entry inside it — a
symlink leading out of the roots or nowhere, a file or subfolder that cannot be read, a
name that is not UTF-8 — is *skipped*: it is never read nor given to run(), and the job
counts it as a failed item with the reason (error_threshold applies), as Azure ML reports
the files it could not score rather than refusing the whole folder.
"""

from __future__ import annotations

import csv
import math
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import orjson

from .requests import JobRequest, RequestError, invalid

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
TABULAR_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class CollectedInput:
    kind: str  # "files": run() gets paths | "rows": run() gets rows
    refs: list[str]
    payloads: list[str]
    description: dict
    # Entries of a folder that are not scored, (reference, why): failed items from the start.
    skipped: tuple[tuple[str, str], ...] = ()


class DataRoots:
    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]
        self._spelled = self.roots + [Path(os.path.normpath(os.path.abspath(r))) for r in roots]

    def contains(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.roots)

    def resolve(self, given: str, field: str = "input.path") -> Path:
        """The real path of `given`, inside a data root, or RequestError naming why not."""
        path = _strip_uri(given, field)
        if "\x00" in path or len(path) > 4096:
            raise invalid(f"{field}: not a usable path")
        if ".." in PurePosixPath(path).parts:
            raise invalid(f"{field}: '..' is not allowed in input paths", "InputOutsideDataRoots")
        if not self.roots:
            raise invalid(f"{field}: this gateway has no data root, so no path input is allowed"
                          " (start it with --data-root DIR, or send inline data)", "InputOutsideDataRoots")
        candidate = Path(path)
        if candidate.is_absolute():
            lexical = Path(os.path.normpath(candidate))
            if not any(lexical == r or r in lexical.parents for r in self._spelled):
                raise invalid(f"{field}: {given} is outside every data root", "InputOutsideDataRoots")
            candidates = [lexical]
        else:
            candidates = [root / path for root in self.roots]
        outside = False
        for option in candidates:
            if not os.path.lexists(option):
                continue
            try:
                real = option.resolve(strict=True)
            except (OSError, RuntimeError):
                outside = True  # a dangling or looping symlink
                continue
            if self.contains(real):
                return real
            outside = True
        if outside:
            raise invalid(f"{field}: {given} leads outside every data root", "InputOutsideDataRoots")
        raise invalid(f"{field}: {given} does not exist under any data root", "InputNotFound")


def _strip_uri(given: str, field: str) -> str:
    if not _SCHEME.match(given):
        return given
    parts = urllib.parse.urlsplit(given)
    if parts.scheme.lower() != "file":
        raise invalid(f"{field}: {parts.scheme}:// inputs are not allowed; give a path under a data root"
                      " (jobs never fetch from other hosts)", "UriNotAllowed")
    if parts.netloc not in ("", "localhost"):
        raise invalid(f"{field}: file:// URIs must not name a host, got {parts.netloc!r}", "UriNotAllowed")
    if parts.query or parts.fragment:
        raise invalid(f"{field}: file:// URIs take no query or fragment", "UriNotAllowed")
    return urllib.parse.unquote(parts.path)


def collect(request: JobRequest, roots: DataRoots, max_items: int) -> CollectedInput:
    """Items of a request; runs in a thread (it may walk a large folder)."""
    if request.input_type == "inline":
        return _rows(request.data or [], {"type": "inline", "items": len(request.data or [])}, max_items)
    assert request.path is not None
    real = roots.resolve(request.path)
    description = {"type": request.input_type, "path": request.path}
    if request.input_type == "uri_folder":
        if not real.is_dir():
            raise invalid(f"input.path: {request.path} is not a folder (use type uri_file for a file)")
        refs: list[str] = []
        payloads: list[str] = []
        skipped: list[tuple[str, str]] = []
        _walk(real, "", roots, {real}, refs, payloads, skipped, max_items)
        if not refs:
            why = "; ".join(f"{ref}: {reason}" for ref, reason in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
            raise invalid(f"input.path: the folder {request.path} has no file to score"
                          + (f" ({len(skipped)} entry(ies) that cannot be scored: {why})" if skipped else ""),
                          "InputEmpty")
        return CollectedInput("files", refs, payloads, description, tuple(skipped))
    if not real.is_file():
        raise invalid(f"input.path: {request.path} is not a file (use type uri_folder for a folder)")
    if not os.access(real, os.R_OK):  # one file (or table): nothing else to score
        raise invalid(f"input.path: {request.path} cannot be read (permission denied)")
    if request.input_type == "uri_file":
        return CollectedInput("files", [_utf8(real.name, "input.path")], [_utf8(str(real), "input.path")],
                              description)
    return _rows(_read_table(real, request.path), description, max_items)


def _utf8(text: str, where: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"{where}: the name {text!r} is not valid UTF-8") from None
    return text


def _shown(text: str) -> str:
    """A file name as text that can be stored and shown: bytes that are not UTF-8 as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(folder: Path, rel: str, roots: DataRoots, seen: set[Path], refs: list[str], payloads: list[str],
          skipped: list[tuple[str, str]], max_items: int) -> None:
    """Files under `folder` into refs/payloads; entries that cannot be scored into skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        if not rel:  # the input folder itself: the job cannot run at all
            raise invalid(f"input.path: cannot read the folder: {exc.strerror}") from None
        skipped.append((_shown(rel) + "/", f"the folder cannot be read ({exc.strerror})"))
        return
    for entry in entries:
        _check_count(refs, skipped, max_items)
        child_ref = f"{rel}/{entry.name}" if rel else entry.name
        if not _is_utf8(child_ref):
            skipped.append((_shown(child_ref), "its name is not valid UTF-8"))
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            try:
                path = path.resolve(strict=True)
            except (OSError, RuntimeError):
                skipped.append((child_ref, "a broken or looping symlink"))
                continue
            if not roots.contains(path):  # never read, never given to run()
                skipped.append((child_ref, "a symlink leading outside every data root (not read)"))
                continue
        if path.is_dir():
            if path not in seen:
                seen.add(path)
                _walk(path, child_ref, roots, seen, refs, payloads, skipped, max_items)
        elif path.is_file():
            if not _is_utf8(str(path)):  # a symlink inside the roots to a file whose real path is not UTF-8
                skipped.append((child_ref, "its path is not valid UTF-8"))
            elif not os.access(path, os.R_OK):
                skipped.append((child_ref, "the file cannot be read (permission denied)"))
            else:
                refs.append(child_ref)
                payloads.append(str(path))
    _check_count(refs, skipped, max_items)


def _check_count(refs: list[str], skipped: list, max_items: int) -> None:
    if len(refs) + len(skipped) > max_items:
        raise invalid(f"input.path: more than {max_items} files; split the job", "TooManyItems")


# What a CSV cell must look like to be read as a number: plain ASCII decimals, as a
# spreadsheet writes them. Python's int() and float() also take "1_000", other scripts'
# digits, surrounding spaces, "nan" and "inf" — two different cells could then reach run()
# as the same number, or a number JSON cannot carry; those stay the text in the file, as
# do numbers with leading zeros ("007": an identifier, most likely).
_INTEGER = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number(text: str):
    if _INTEGER.fullmatch(text):
        return int(text)
    if _DECIMAL.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else text  # 1e999: kept as written
    return text


def _read_table(real: Path, given: str) -> list:
    if real.suffix.lower() not in TABULAR_SUFFIXES:
        raise invalid(f"input.path: tabular input must be a .csv or .jsonl file, got {given}")
    try:
        with open(real, encoding="utf-8-sig", newline="") as handle:  # a BOM (Excel) is not data
            if real.suffix.lower() == ".csv":
                return _read_csv(handle, given)
            rows = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(orjson.loads(line))
                    except orjson.JSONDecodeError as exc:
                        raise invalid(f"input.path: line {number} of {given} is not JSON: {exc}") from None
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise invalid(f"input.path: cannot read {given}: {exc}") from None


def _read_csv(handle, given: str) -> list[dict]:
    """Rows keyed by the header; a row with more or fewer values than the header is refused."""
    reader = csv.reader(handle)
    header = next((record for record in reader if record), [])
    seen: set[str] = set()
    for name in header:  # a repeated name would keep only its last column's values
        if name in seen:
            raise invalid(f"input.path: the header of {given} names column {name!r} twice")
        seen.add(name)
    rows = []
    for record in reader:
        if not record:
            continue  # a blank line
        if len(record) != len(header):
            raise invalid(f"input.path: line {reader.line_num} of {given} has {len(record)} values;"
                          f" its header has {len(header)} columns")
        rows.append({k: _number(v) for k, v in zip(header, record)})
    return rows


def _rows(rows: list, description: dict, max_items: int) -> CollectedInput:
    if not rows:
        raise invalid("input: there is no row to score", "InputEmpty")
    if len(rows) > max_items:
        raise RequestError(413, "TooManyItems", f"input: {len(rows)} rows; at most {max_items} per job")
    try:
        payloads = [orjson.dumps(row).decode() for row in rows]
    except TypeError as exc:
        raise invalid(f"input: a row cannot be stored: {exc}") from None
    return CollectedInput("rows", [str(i) for i in range(len(rows))], payloads, {**description, "items": len(rows)})
