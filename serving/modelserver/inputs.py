"""What ``run()`` is given: the body of a POST, or the query of a GET, as azmlinfsrv gives them.

A GET /score is scored too (Azure ML clients and browsers use it): the query parameters
become a JSON object, each value parsed as JSON when it is JSON (else kept as a string),
a repeated name a list. A plain run() gets that object dumped by ``json.dumps`` (the
same string azmlinfsrv passes); an @input_schema run() gets its fields by name.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

from multidict import MultiMapping

from serving.modelserver import jsoncodec
from serving.modelserver.loader import ScoringScript


def _query_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def query_object(query: MultiMapping[str]) -> dict[str, Any]:
    """``?a=1&b=[1,2]&a=x`` → ``{"a": [1, "x"], "b": [1, 2]}`` (names in first-seen order)."""
    parsed: dict[str, Any] = {}
    for name in dict.fromkeys(query.keys()):
        values = [_query_value(value) for value in query.getall(name)]
        parsed[name] = values[0] if len(values) == 1 else values
    return parsed


def query_input(script: ScoringScript, query: MultiMapping[str]) -> str | dict[str, Any]:
    """The input of a GET; ValueError says which field an @input_schema run() misses."""
    parsed = query_object(query)
    if script.named_inputs is None:
        return json.dumps(parsed)
    return _fields(script, parsed, "the query")


def named_arguments(script: ScoringScript, raw_data: str) -> dict[str, Any]:
    """The keyword arguments of an @input_schema run(): the JSON body's fields it names,
    or their defaults. ValueError says what the body lacks."""
    try:
        body = jsoncodec.loads(raw_data)
    except ValueError as exc:
        raise ValueError(f"the body is not JSON ({exc}); run() takes a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: run() takes its fields by name "
                         f"({', '.join(name for name, _ in script.named_inputs)})")
    return _fields(script, body, "the body")


def _fields(script: ScoringScript, given: dict[str, Any], where: str) -> dict[str, Any]:
    arguments = {}
    for name, default in script.named_inputs:
        value = given.get(name, default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"{where} has no {name!r}, which run() requires")
        arguments[name] = value
    return arguments
