"""Typed reads of a resource's fields, written once for every way in.

YAML manifests (serving/manifests/fields.py) and Kubernetes custom resources
(serving/backends/kubernetes/translation.py) read the same kinds of value — names,
bounded integers, mappings, traffic weights, settings blocks — and must refuse them in
the same words, so the readers live here and cannot drift apart. A subclass says only
what differs: how a refusal is raised (`fail`), how field names are spelled (`case`),
what the format calls a mapping and which unknown fields it lets pass.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable, Iterable, NoReturn

from router.paths import NAME_RULE

from .online_rules import FULL_TRAFFIC, Problem


def _as_is(name: str) -> str:
    return name


class BaseFieldReader:
    """The typed readers; each refuses a value through `fail`, naming the field."""

    case: Callable[[str], str] = staticmethod(_as_is)  # a snake_case field name as the format spells it
    mapping_noun = "a mapping"  # "an object" in a custom resource
    ignored: frozenset[str] | set[str] = frozenset()  # unknown fields accepted and not used

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise NotImplementedError

    def check(self, problems: Iterable[Problem], prefix: str = "") -> None:
        """Refuse the resource for the first rule it breaks (serving/online_rules.py)."""
        for problem in problems:
            self.fail(prefix + problem.field, problem.message)

    def ignoring(self, field: str) -> None:
        """A field `ignored` let pass: a subclass may tell the user (YAML does)."""

    def check_fields(self, body: dict, allowed: set[str], prefix: str = "", ignored=None) -> None:
        skip = self.ignored if ignored is None else ignored
        for key in body:
            if key in allowed:
                continue
            if key not in skip:
                self.fail(prefix + str(key), f"unknown field (expected one of: {', '.join(sorted(allowed))})")
            self.ignoring(prefix + str(key))

    def name(self, value: Any, field: str) -> str:
        """An endpoint or deployment name, by the rule the router matches URLs with, and
        not ending with '-' (as Azure ML's): an endpoint name is a DNS label of its host."""
        if not isinstance(value, str) or not NAME_RULE.match(value) or value.endswith("-"):
            self.fail(field, f"must be 2-32 letters, digits or '-', starting with a letter and not ending"
                             f" with '-'; got {value!r}")
        return value

    def default_deployment(self, value: Any, field: str) -> str | None:
        """A batch endpoint's `defaults`: the deployment a job goes to when it names none."""
        defaults = self.mapping(value, field)
        key = self.case("deployment_name")
        self.check_fields(defaults, {key}, f"{field}.")
        default = defaults.get(key)
        return None if default is None else self.name(default, f"{field}.{key}")

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
        """A mapping; absent (None) reads as empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(field, f"must be {self.mapping_noun}, got {type(value).__name__}")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, f"must be a non-empty string, got {value!r}")
        return value

    def string_map(self, value: Any, field: str) -> dict[str, str]:
        """Strings by key; a number is kept as its text, anything else refused."""
        out = {}
        for key, item in self.mapping(value, field).items():
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                self.fail(f"{field}.{key}", f"must be a string, got {item!r}")
            out[str(key)] = str(item)
        return out

    def weights(self, value: Any, field: str) -> dict[str, int]:
        """Percent of traffic by deployment name (traffic, mirror_traffic)."""
        out = {}
        for key, weight in self.mapping(value, field).items():
            self.name(key, f"{field}.{key}")
            out[key] = self.integer(weight, f"{field}.{key}", 0, FULL_TRAFFIC)
        return out

    def settings(self, kind, value: Any, field: str, numbers: tuple[str, ...] = ()):
        """A settings block into the dataclass `kind`: integers ≥ 0, the fields named in
        `numbers` may be fractional, `type` is a string; keys spelled by `case`."""
        body = self.mapping(value, field)
        by_key = {self.case(f.name): f.name for f in fields(kind)}
        self.check_fields(body, set(by_key), prefix=f"{field}.")
        values = {}
        for key, raw in body.items():
            name = by_key.get(key)
            if name is None:
                continue  # a field `ignored` let pass: accepted and not used
            if name == "type":
                values[name] = self.string(raw, f"{field}.{key}")
            elif name in numbers:
                values[name] = self.number(raw, f"{field}.{key}", 0)
            else:
                values[name] = self.integer(raw, f"{field}.{key}", 0)
        return kind(**values)
