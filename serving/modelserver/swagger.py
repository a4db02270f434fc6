"""The ``GET /swagger.json`` document: the user's own file, or a minimal one.

Clients and the gateway's ``/swagger.json`` pass-through expect something valid
even when the data scientist wrote no schema, so we generate OpenAPI 2.0. It
describes what this server takes: ``POST /score`` and ``GET /score`` (which
azmlinfsrv's template leaves out, though it serves it), and for an
``@input_schema`` run() its fields, typed by inference-schema as azmlinfsrv does.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from serving.modelserver import jsoncodec
from serving.modelserver.loader import ScoringScript

SWAGGER_FILE = "swagger.json"
HEADERS_PARAMETER = "request_headers"

log = logging.getLogger("scoregate.modelserver")


def _fields_schema(script: ScoringScript) -> dict[str, Any]:
    """The JSON object an @input_schema run() takes: inference-schema's own description of it
    (as azmlinfsrv's ServiceInput) when it gives one, without ``request_headers`` (never
    read from the body), and which fields are required."""
    names = [name for name, _ in script.named_inputs]
    schema: dict[str, Any] = {"type": "object", "properties": {name: {} for name in names}}
    get_input_schema = getattr(sys.modules.get("inference_schema.schema_util"), "get_input_schema", None)
    try:
        described = get_input_schema(script.run) if get_input_schema is not None else None
    except Exception:  # noqa: BLE001 - a type inference-schema cannot describe: keep the names only
        log.warning("inference-schema could not describe run()'s input; swagger.json names its fields only",
                    exc_info=True)
        described = None
    if isinstance(described, dict) and isinstance(described.get("properties"), dict):
        described = {**described, "properties": {name: value for name, value in described["properties"].items()
                                              if name != HEADERS_PARAMETER}}
        if isinstance(described.get("example"), dict):
            described["example"] = {name: value for name, value in described["example"].items()
                                    if name != HEADERS_PARAMETER}
        try:
            jsoncodec.dumps(described)
            schema = described
        except (TypeError, ValueError):  # an example JSON cannot hold: keep the names only
            log.warning("run()'s input schema cannot be written as JSON; swagger.json names its fields only")
    required = [name for name, default in script.named_inputs if default is inspect.Parameter.empty]
    if required:
        schema["required"] = required
    return schema


def _score_operations(script: ScoringScript | None) -> dict[str, Any]:
    error = {"$ref": "#/definitions/ErrorResponse"}
    named = script is not None and script.named_inputs is not None
    ran = {"description": "The value returned by run().", "schema": {"type": "object"}}
    if named:
        post_description = ("Call run() with the fields of the JSON object in the body as keyword arguments "
                            "(defaults for those left out, others ignored).")
        body_schema = _fields_schema(script)
        query = [{"name": name, "in": "query", "required": default is inspect.Parameter.empty, "type": "string",
                  "description": "A JSON value (kept as a string when it is not JSON)."}
                 for name, default in script.named_inputs]
        get_description = ("Call run() with the query parameters as keyword arguments, each value parsed as "
                           "JSON when it is JSON (else kept as a string), a repeated name a list.")
    else:
        post_description = "Call run(raw_data) with the request body as a UTF-8 string."
        body_schema = {"type": "object"}
        query = []
        get_description = ("Call run(raw_data) with the query parameters as a JSON object in a string: each "
                           "value parsed as JSON when it is JSON (else kept as a string), a repeated name a "
                           "list; no query is '{}'.")
    post_errors = {
        "400": {"description": "The body is not valid UTF-8" + (
            ", or not a JSON object holding run()'s required fields." if named else "."), "schema": error},
    }
    if named:
        post_errors["415"] = {"description": "The Content-Type is not application/json.", "schema": error}
    failed = {"description": "run() raised an exception.", "schema": error}
    get_errors = {"400": {"description": "The query lacks a field run() requires.", "schema": error}} if named else {}
    return {
        "post": {
            "operationId": "RunMLService",
            "description": post_description,
            "parameters": [{
                "name": "serviceInputPayload",
                "in": "body",
                "required": True,
                "description": "The input of run().",
                "schema": body_schema,
            }],
            "responses": {"200": ran, **post_errors, "500": failed},
        },
        "get": {
            "operationId": "RunMLServiceWithQuery",
            "description": get_description + " Served by the model server itself; the gateway's "
                           "/api/v1/endpoint/{endpoint}/score takes POST only.",
            "parameters": query,
            "responses": {"200": ran, **get_errors, "500": failed},
        },
    }


def generated_document(title: str, script: ScoringScript | None = None) -> dict:
    """A minimal OpenAPI 2.0 description of the scoring contract."""
    return {
        "swagger": "2.0",
        "info": {
            "title": title,
            "description": "Scoring API generated by scoregate-modelserver "
            "(the scoring script provides no swagger.json).",
            "version": "1.0",
        },
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Liveness and readiness check.",
                    "produces": ["text/plain"],
                    "responses": {"200": {"description": "Healthy", "schema": {"type": "string"}}},
                }
            },
            "/score": _score_operations(script),
            "/swagger.json": {
                "get": {
                    "operationId": "GetSwaggerSpec",
                    "description": "This document.",
                    "responses": {"200": {"description": "The Swagger specification.", "schema": {"type": "object"}}},
                }
            },
        },
        "definitions": {
            "ErrorResponse": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "request_id": {"type": "string"},
                },
            }
        },
    }


def load_swagger(code_dir: Path, title: str, script: ScoringScript | None = None) -> bytes:
    """Read the code folder's swagger.json once at startup, else generate one."""
    path = code_dir / SWAGGER_FILE
    if path.is_file():
        return path.read_bytes()
    return jsoncodec.dumps(generated_document(title, script))
