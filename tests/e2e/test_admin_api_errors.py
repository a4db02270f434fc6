"""The admin port's answers name their request, as the scoring port's do: an
`x-request-id` header on every answer and `{code, message, request_id}` in every error
body — management API, aiohttp's own refusals and the token check alike."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(gw, method, path, *, token=True, request_id=None, body=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {gw.info.admin_token}"
    if request_id:
        headers["x-request-id"] = request_id
    request = urllib.request.Request(f"{gw.info.admin_url}{path}", method=method, headers=headers,
                                     data=None if body is None else body.encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def error(gw, method, path, expected_status, **kwargs):
    status, headers, raw = call(gw, method, path, **kwargs)
    assert status == expected_status, raw
    assert headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert body["code"] and body["message"]
    assert body["request_id"] == headers["x-request-id"]
    return body, headers


def test_errors_carry_the_request_id_of_their_answer(gateway):
    body, _ = error(gateway, "GET", "/api/v1/endpoints/nope", 404)
    assert "nope" in body["message"]
    body, headers = error(gateway, "GET", "/api/v1/endpoints", 401, token=False)
    assert body["code"] == "Unauthorized" and headers["WWW-Authenticate"] == "Bearer"  # RFC 9110
    assert error(gateway, "POST", "/api/v1/apply", 400, body="{not json")[0]["code"] == "BadRequest"
    assert error(gateway, "GET", "/no/such/route", 404)[0]["code"] == "NotFound"
    body, headers = error(gateway, "DELETE", "/healthz", 405)
    assert "GET" in headers["Allow"]
    # A caller's own sane id is kept, a strange one replaced.
    assert error(gateway, "GET", "/api/v1/endpoints/nope", 404, request_id="cli-42")[0]["request_id"] == "cli-42"
    assert error(gateway, "GET", "/api/v1/endpoints/nope", 404, request_id="bad id\t")[0]["request_id"] != "bad id\t"


def test_answers_that_succeed_name_their_request_too(gateway):
    status, headers, raw = call(gateway, "GET", "/api/v1/endpoints", request_id="list-1")
    assert status == 200 and json.loads(raw) == [] and headers["x-request-id"] == "list-1"
    for path in ("/metrics", "/static/status/status.css"):  # a file answer is prepared by aiohttp itself
        status, headers, _ = call(gateway, "GET", path)
        assert status == 200 and headers["x-request-id"], path
