"""The router in this process, a recording replica behind it, real TLS in front:
what is forwarded, what comes back, and how failures map to status codes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from router import (DeploymentRoute, EndpointRoute, Replica, RequestSettings, RouterApp, RouterSettings,
                    RoutingTable, RoutingTableHolder)
from tests.fakes.recording_upstream import Script
from tests.support.clients import open_raw_tls
from tls import server_context

KEY = "k" * 43


def table_for(port: int, timeout_ms: int = 5000) -> RoutingTable:
    deployment = DeploymentRoute("blue", (Replica("blue-1", "127.0.0.1", port),),
                                 RequestSettings(request_timeout_ms=timeout_ms))
    endpoint = EndpointRoute("ep", keys=(KEY, "other"), traffic=(("blue", 100),),
                             deployments={"blue": deployment})
    return RoutingTable(version=1, endpoints={"ep": endpoint})


@pytest.fixture
async def router(upstream, certs):
    holder = RoutingTableHolder(table_for(upstream.port))
    app = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key)), holder)
    await app.start()
    yield app
    await app.drain(1)
    await app.close()


def url(router, tail="score"):
    return f"https://127.0.0.1:{router.port}/api/v1/endpoint/ep/{tail}"


AUTH = {"Authorization": f"Bearer {KEY}"}


async def test_hop_by_hop_and_credentials_are_not_forwarded(router, upstream, client):
    headers = {**AUTH, "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
               "TE": "trailers", "Proxy-Authorization": "Basic abc", "Proxy-Connection": "keep-alive",
               "X-Custom": "kept", "X-Forwarded-For": "203.0.113.9", "Content-Type": "application/json"}
    async with client.post(url(router), data=b'{"a": 1}', headers=headers) as r:
        assert r.status == 200
    [seen] = upstream.seen
    names = {k.lower() for k, _ in seen.headers}
    for dropped in ("authorization", "x-private", "keep-alive", "te", "proxy-authorization", "proxy-connection"):
        assert dropped not in names, dropped
    assert seen.header("X-Custom") == "kept"
    assert seen.header("Content-Type") == "application/json"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"  # the caller is no trusted proxy
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("x-request-id") == r.headers["x-request-id"]
    assert seen.body == b'{"a": 1}' and seen.path_qs == "/score"


async def test_repeated_headers_reach_the_model_in_order_and_byte_for_byte(router, upstream, certs):
    # Without a Connection header the parser picks the forwarded lines as it goes
    # (router.http1); sent raw, as client libraries merge repeated headers.
    reader, writer = await open_raw_tls(router.port, certs.ca_cert)
    writer.write(b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nX-Tag: a\r\n"
                 b"Authorization: " + AUTH["Authorization"].encode() + b"\r\nx-TAG: b\r\n"
                 b"X-Note: caf\xc3\xa9 \t ok\r\nX-Tag: c\r\nContent-Length: 2\r\n\r\n{}")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    [seen] = upstream.seen
    assert [(k, v) for k, v in seen.headers if k.lower() == "x-tag"] == [("X-Tag", "a"), ("x-TAG", "b"), ("X-Tag", "c")]
    assert seen.header("X-Note").encode("utf-8", "surrogateescape") == "caf\u00e9 \t ok".encode()
    assert "authorization" not in {k.lower() for k, _ in seen.headers}


async def test_hop_by_hop_response_headers_are_not_returned(router, upstream, client):
    upstream.respond = Script(headers={"Content-Type": "text/plain", "Connection": "X-Upstream-Only",
                                       "X-Upstream-Only": "1", "Proxy-Authenticate": "Basic", "X-Model": "m1"},
                              body=b"hello")
    async with client.post(url(router), data=b"x", headers=AUTH) as r:
        assert r.status == 200 and await r.read() == b"hello"
        assert r.headers["X-Model"] == "m1"
        assert "X-Upstream-Only" not in r.headers and "Proxy-Authenticate" not in r.headers
        assert r.headers["azureml-model-deployment"] == "blue"


@pytest.mark.parametrize("status", [200, 500])
async def test_headers_the_gateway_sets_come_back_once_with_its_values(router, upstream, client, status):
    # A model server that echoes the request id (as most do) or sets headers of the
    # gateway's own: the caller must see each once, the gateway's value — two
    # x-request-id headers would be joined into "a, a" by many HTTP clients.
    upstream.respond = Script(status=status, body=b"{}", headers={
        "Content-Type": "application/json", "x-request-id": "from-the-model",
        "azureml-model-deployment": "not-blue", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        "ms-azureml-model-error-statuscode": "299", "ms-azureml-model-error-reason": "made up",
        "Server-Timing": "model-own;dur=1.0", "X-Model": "m1"})
    async with client.post(url(router), data=b"{}", headers={**AUTH, "x-request-id": "caller-7"}) as r:
        await r.read()
        headers = r.headers
    assert headers.getall("x-request-id") == ["caller-7"]
    assert headers.getall("azureml-model-deployment") == ["blue"]
    [traceparent] = headers.getall("traceparent")
    assert traceparent != "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    if status == 200:
        assert r.status == 200 and "ms-azureml-model-error-statuscode" not in headers
    else:
        assert r.status == 424
        assert headers.getall("ms-azureml-model-error-statuscode") == ["500"]
        assert headers.getall("ms-azureml-model-error-reason") == ["Internal Server Error"]
    # The model's own headers still pass: Server-Timing is a list, the gateway's is added.
    assert "model-own;dur=1.0" in headers.getall("Server-Timing")
    assert len(headers.getall("Server-Timing")) == 2
    assert headers.getall("X-Model") == ["m1"]


async def test_large_bodies_stream_both_ways_intact(router, upstream, client):
    payload = os.urandom(8 * 1024 * 1024)
    upstream.respond = Script(headers={"Content-Type": "application/octet-stream"}, body=payload[::-1], chunks=64)

    async def chunks():
        for start in range(0, len(payload), 1 << 20):
            yield payload[start:start + (1 << 20)]

    async with client.post(url(router), data=chunks(), headers=AUTH) as r:
        body = await r.read()
        assert r.status == 200
    [seen] = upstream.seen
    assert hashlib.sha256(seen.body).digest() == hashlib.sha256(payload).digest()
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload[::-1]).digest()


async def test_query_string_and_encoded_sub_paths_pass_unchanged(router, upstream, client):
    async with client.get(url(router, "v2/models/m%201/ready?verbose=1&x=%20"), headers=AUTH) as r:
        assert r.status == 200
    assert upstream.seen[0].raw_path == "/v2/models/m%201/ready?verbose=1&x=%20"
    assert upstream.seen[0].method == "GET" and upstream.seen[0].body == b""


async def test_a_percent_encoded_prefix_or_name_still_sends_only_the_sub_path(router, upstream, certs):
    """The route is matched on the decoded path; the model gets the raw remainder after the
    endpoint's segment, wherever the caller encoded letters before it."""
    for target in (b"/api/v1/endpoin%74/ep/health?x=%20", b"/api/v1/endpoint/%65p/health?x=%20",
                   b"/%61pi/v1/endpoint/ep/health?x=%20"):
        reader, writer = await open_raw_tls(router.port, certs.ca_cert)
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                     + AUTH["Authorization"].encode() + b"\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 200 "), (target, head)
        assert upstream.seen[-1].raw_path == "/health?x=%20", target
    reader, writer = await open_raw_tls(router.port, certs.ca_cert)
    writer.write(b"GET /api/v1/endpoin%74/ep HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                 + AUTH["Authorization"].encode() + b"\r\n\r\n")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 404 ")  # no sub-path: as /api/v1/endpoint/ep


async def test_non_2xx_from_the_model_is_424_with_its_status_reason_and_body(router, upstream, client):
    upstream.respond = Script(status=503, reason="Model Busy", body=b'{"detail": "busy"}')
    async with client.post(url(router), data=b"{}", headers=AUTH) as r:
        assert r.status == 424
        assert r.headers["ms-azureml-model-error-statuscode"] == "503"
        assert r.headers["ms-azureml-model-error-reason"] == "Model Busy"
        assert await r.read() == b'{"detail": "busy"}'


async def test_a_model_that_does_not_answer_in_time_is_504(router, upstream, client):
    router.holder.swap(table_for(upstream.port, timeout_ms=200))
    upstream.respond = Script(delay_s=2)
    async with client.post(url(router), data=b"{}", headers=AUTH) as r:
        body = await r.json()
        assert r.status == 504 and body["code"] == "ModelTimeout"
        assert body["request_id"] == r.headers["x-request-id"]


async def test_a_refused_connection_is_502(router, client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    router.holder.swap(table_for(closed_port))
    async with client.post(url(router), data=b"{}", headers=AUTH) as r:
        assert r.status == 502 and (await r.json())["code"] == "ModelConnectionError"


async def test_no_ready_replica_is_503_with_retry_after(router, client):
    endpoint = EndpointRoute("ep", keys=(KEY,), traffic=(("blue", 100),),
                             deployments={"blue": DeploymentRoute("blue")})
    router.holder.swap(RoutingTable(version=5, endpoints={"ep": endpoint}))
    async with client.post(url(router), data=b"{}", headers=AUTH) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["code"] == "NoReadyReplica"


async def test_a_declared_body_over_the_limit_is_413_without_reaching_the_model(upstream, certs, client):
    holder = RoutingTableHolder(table_for(upstream.port))
    from router import BodySettings
    app = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key),
                                   body=BodySettings(max_body_bytes=1024)), holder)
    await app.start()
    try:
        async with client.post(url(app), data=b"x" * 4096, headers=AUTH) as r:
            assert r.status == 413 and (await r.json())["code"] == "PayloadTooLarge"
        async def chunks():
            for _ in range(8):
                yield b"y" * 512
        async with client.post(url(app), data=chunks(), headers=AUTH) as r:
            assert r.status == 413, await r.text()
    finally:
        await app.drain(1)
        await app.close()
    assert all(len(s.body) <= 1024 for s in upstream.seen)


async def test_metrics_count_requests_by_endpoint_deployment_and_status(router, upstream, client):
    for _ in range(3):
        async with client.post(url(router), data=b"{}", headers=AUTH) as r:
            assert r.status == 200
    async with client.post(url(router), data=b"{}") as r:
        assert r.status == 401
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_requests_total", {"endpoint": "ep", "deployment": "blue", "status": "200", "code": ""}) == 3
    assert value("scoregate_requests_total", {"endpoint": "ep", "deployment": "-", "status": "401",
                                              "code": "Unauthorized"}) == 1
    assert value("scoregate_request_duration_seconds_count", {"endpoint": "ep", "deployment": "blue"}) == 3


async def test_host_routes_find_an_endpoint_whatever_the_case_of_its_name(upstream, certs, client):
    """`https://NAME.DOMAIN/score`: the host is lowercased (DNS has no case), so an endpoint
    named with capitals was never found by its host name — 404 "no endpoint named 'myep'"."""
    deployment = DeploymentRoute("blue", (Replica("blue-1", "127.0.0.1", upstream.port),), RequestSettings())
    named = EndpointRoute("MyEp", keys=(KEY,), traffic=(("blue", 100),), deployments={"blue": deployment})
    holder = RoutingTableHolder(RoutingTable(version=1, endpoints={"MyEp": named}))
    app = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key),
                                   domain="scoring.example.test"), holder)
    await app.start()
    try:
        for host in ("myep.scoring.example.test", "MyEp.Scoring.Example.Test", "MYEP.scoring.example.test:443"):
            async with client.post(f"https://127.0.0.1:{app.port}/score", data=b"{}",
                                   headers={**AUTH, "Host": host}) as r:
                assert r.status == 200, (host, await r.text())
        async with client.post(f"https://127.0.0.1:{app.port}/score", data=b"{}",
                               headers={**AUTH, "Host": "other.scoring.example.test"}) as r:
            assert r.status == 404 and (await r.json())["code"] == "EndpointNotFound"
    finally:
        await app.drain(1)
        await app.close()


async def test_a_401_names_the_bearer_scheme(router, client):
    """RFC 9110: a 401 carries WWW-Authenticate; ours had only the JSON body."""
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with client.post(url(router), data=b"{}", headers=headers) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
            assert (await r.json())["code"] == "Unauthorized"
