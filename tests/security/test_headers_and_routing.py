"""Headers and routing input: X-Forwarded-For is trusted only from trusted proxies,
request ids are limited, and paths cannot reach another endpoint or an unsafe path."""

from __future__ import annotations

import json

import pytest

from tests.functional.router_harness import AUTH, post





async def test_forwarded_for_is_replaced_unless_the_caller_is_a_trusted_proxy(make_router, upstream, client):
    plain = await make_router()
    await post(client, plain, headers={"X-Forwarded-For": "198.51.100.7"})
    assert upstream.seen[-1].header("X-Forwarded-For") == "127.0.0.1"
    trusting = await make_router(trusted_proxies=("127.0.0.0/8",))
    await post(client, trusting, headers={"X-Forwarded-For": "198.51.100.7"})
    assert upstream.seen[-1].header("X-Forwarded-For") == "198.51.100.7, 127.0.0.1"


@pytest.mark.parametrize("given, kept", [
    ("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("has space", False), ("ünïcode", False),
    ("<script>", False), ("", False), ("-leading-dash", False),
])
async def test_request_ids_are_length_and_charset_limited(make_router, upstream, client, given, kept):
    router = await make_router()
    _, headers, _ = await post(client, router, headers={"x-request-id": given})
    assert (headers["x-request-id"] == given) is kept
    assert upstream.seen[-1].header("x-request-id") == headers["x-request-id"]


@pytest.mark.parametrize("path", [
    "/api/v1/endpoint/ep/..%2f..%2fother/score",
    "/api/v1/endpoint/ep/%2e%2e/admin",
    "/api/v1/endpoint/ep/a/%00/b",
    "/api/v1/endpoint/ep/a%252fb",
    "/api/v1/endpoint/ep/a%5cb",
    "/api/v1/endpoint/ep/a/%zz",
])
async def test_unsafe_sub_paths_never_reach_a_model(make_router, upstream, client, path):
    router = await make_router()
    async with client.get(f"https://127.0.0.1:{router.port}{path}", headers=AUTH) as r:
        body = await r.json()
        assert r.status in (400, 404), path
        assert body["code"] in ("BadRequest", "NotFound", "EndpointNotFound")
    assert upstream.seen == []


@pytest.mark.parametrize("raw_path", [b"/api/v1/endpoint/ep/../other/score", b"/api/v1/endpoint/ep/./x",
                                      b"/api/v1/endpoint/ep\\..\\x/score", b"/api/v1/endpoint/e%2Fp/score"])
async def test_raw_dot_segments_and_separators(make_router, upstream, raw, raw_path):
    router = await make_router()
    received, _ = await raw(router).exchange(b"GET " + raw_path + b" HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                                             + AUTH["Authorization"].encode() + b"\r\nConnection: close\r\n\r\n")
    status = int(received.split(b" ", 2)[1])
    assert status in (400, 404)
    assert upstream.seen == []


async def test_endpoint_and_deployment_names_are_checked_before_lookup(make_router, upstream, client):
    router = await make_router()
    for name in ("e" * 40, "1ep", "ep_x"):
        async with client.post(f"https://127.0.0.1:{router.port}/api/v1/endpoint/{name}/score", data=b"{}",
                               headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["code"] == "EndpointNotFound"
    status, _, body = await post(client, router, headers={"azureml-model-deployment": "../blue"})
    assert status == 404 and json.loads(body)["code"] == "DeploymentNotFound"
    assert upstream.seen == []


async def test_two_deployment_pins_are_refused_not_resolved_by_order(make_router, upstream, raw):
    """Two `azureml-model-deployment` headers name two deployments (or one twice): which one
    a proxy in front would keep is not known, so neither is guessed — 400, nothing sent."""
    router = await make_router()
    for pins in ((b"blue", b"green"), (b"blue", b"blue")):
        received, _ = await raw(router).exchange(
            b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
            + AUTH["Authorization"].encode() + b"\r\n"
            + b"".join(b"azureml-model-deployment: %s\r\n" % pin for pin in pins)
            + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), received
        error = json.loads(body)
        assert error["code"] == "BadRequest" and "azureml-model-deployment" in error["message"]
        assert error["request_id"]
    assert upstream.seen == []
