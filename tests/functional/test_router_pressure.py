"""The router when replicas are busy, slow, failing or gone: admission (429/503), deadlines
(504/408), failures (502), ejection and return, retry only before sending, rate limits."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from router.pipeline import BodySettings
from tests.fakes.recording_upstream import RecordingUpstream, Script
from tests.functional.router_harness import AUTH, deployment, post, table, url
from tests.support.clients import open_raw_tls
from tls import client_context





@pytest.fixture
async def upstreams():
    servers = [await RecordingUpstream().start() for _ in range(2)]
    yield servers
    for server in servers:
        await server.close()








async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_no_replica_ever_has_more_in_flight_than_its_slots(make_router, upstreams, client):
    for server in upstreams:
        server.respond = Script(delay_s=0.05)
    router = await make_router(table(deployment("blue", [u.port for u in upstreams],
                                                max_concurrent_requests_per_instance=2, max_queue_wait_ms=5000)),
                               queue_depth_factor=20)
    results = await asyncio.gather(*(post(client, router) for _ in range(40)))
    assert [s for s, _, _ in results] == [200] * 40
    assert [u.max_in_flight for u in upstreams] == [2, 2]  # the replicas' own count
    assert sum(len(u.seen) for u in upstreams) == 40


async def test_a_full_queue_and_a_long_wait_are_429_and_never_reach_a_model(make_router, upstreams, client):
    [server, _] = upstreams
    server.respond = Script(fault="hang")
    router = await make_router(table(deployment("blue", [server.port], max_concurrent_requests_per_instance=1,
                                                max_queue_wait_ms=300)), queue_depth_factor=2)
    first = asyncio.create_task(post(client, router))  # takes the only slot and hangs
    await wait_until(lambda: server.in_flight == 1)
    queued = [asyncio.create_task(post(client, router)) for _ in range(2)]  # queue bound 2 × 1 × 1
    await wait_until(lambda: router.admission.queued(("ep", "blue")) == 2)
    full = await asyncio.gather(*(post(client, router) for _ in range(3)))
    for status, headers, body in full:
        assert status == 429 and headers["Retry-After"] == "1"
        assert json.loads(body)["code"] == "QueueFull"
    waited = await asyncio.gather(*queued)
    for status, _, body in waited:
        assert status == 429 and json.loads(body)["code"] == "QueueWaitTimeout"
    assert len(server.seen) == 1  # only the first request reached the model
    server.hanging.set()
    assert (await first)[0] == 200
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_requests_total", {"endpoint": "ep", "deployment": "blue", "status": "429",
                                              "code": "QueueFull"}) == 3
    assert value("scoregate_queue_wait_seconds_count", {"endpoint": "ep", "deployment": "blue"}) == 2


async def test_a_queued_request_gets_the_freed_slot_in_order(make_router, upstreams, client):
    [server, _] = upstreams
    server.respond = Script(delay_s=0.1)
    router = await make_router(table(deployment("blue", [server.port], max_concurrent_requests_per_instance=1,
                                                max_queue_wait_ms=5000)), queue_depth_factor=10)
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(post(client, router, body=json.dumps({"i": i}).encode())))
        await asyncio.sleep(0.02)  # arrive in order
    assert [s for s, _, _ in await asyncio.gather(*tasks)] == [200] * 5
    assert [json.loads(s.body)["i"] for s in server.seen] == [0, 1, 2, 3, 4]
    assert server.max_in_flight == 1


async def test_a_model_over_its_timeout_is_504_and_its_slot_is_freed_at_once(make_router, upstreams, client):
    [server, _] = upstreams
    server.respond = Script(fault="hang")
    router = await make_router(table(deployment("blue", [server.port], request_timeout_ms=200,
                                                max_concurrent_requests_per_instance=1)))
    status, _, body = await post(client, router)
    assert status == 504 and json.loads(body)["code"] == "ModelTimeout"
    assert router.in_flight.total() == 0
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:  # the upstream call was dropped too
        await asyncio.sleep(0.01)
    assert server.in_flight == 0
    server.respond = Script()
    assert (await post(client, router))[0] == 200


async def test_a_client_too_slow_to_send_its_body_is_408(make_router, upstreams, certs):
    [server, _] = upstreams
    router = await make_router(table(deployment("blue", [server.port])),
                               body=BodySettings(body_timeout_s=0.3))
    reader, writer = await open_raw_tls(router.port, certs.ca_cert)
    writer.write(b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\n"
                 b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n"
                 b"Content-Length: 100\r\n\r\n{\"partial\":")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()
    assert server.seen == []


async def test_reset_and_crash_mid_body_are_502_or_a_cut_connection(make_router, upstreams, client):
    [server, _] = upstreams
    router = await make_router(table(deployment("blue", [server.port])))
    server.respond = Script(fault="reset")
    status, _, body = await post(client, router)
    assert status == 502 and json.loads(body)["code"] == "ModelConnectionError"
    server.respond = Script(fault="crash_mid_body", body=b"z" * (1024 * 1024))
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(client, router)  # headers arrived, then the connection was cut
    server.respond = Script()
    assert (await post(client, router))[0] == 200  # the gateway recovers with the replica


async def test_no_ready_replica_is_503_with_retry_after(make_router, client):
    router = await make_router(table(deployment("blue", [])))
    status, headers, body = await post(client, router)
    assert status == 503 and headers["Retry-After"] == "1" and json.loads(body)["code"] == "NoReadyReplica"


async def test_a_refusing_replica_is_retried_elsewhere_ejected_and_probed_back(make_router, upstreams, client):
    [good, _] = upstreams
    dead_port = closed_port()
    router = await make_router(
        table(deployment("blue", [dead_port, good.port], max_concurrent_requests_per_instance=4)),
        ejection_failures=3, ejection_base_s=0.3)
    statuses = [(await post(client, router))[0] for _ in range(20)]
    assert statuses == [200] * 20  # every connect failure was retried on the good replica
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_replica_ejections_total", {"endpoint": "ep", "deployment": "blue"}) == 1
    retries = value("scoregate_upstream_retries_total", {"endpoint": "ep", "deployment": "blue"})
    assert retries == 3  # after three failures the dead replica was no longer tried
    assert router.ejector.is_ejected("blue-0")

    # The replica comes back on the same port: the probe re-admits it.
    revived = RecordingUpstream()
    from aiohttp import web
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", revived._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", dead_port).start()
    try:
        deadline = time.monotonic() + 10
        while router.ejector.is_ejected("blue-0") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not router.ejector.is_ejected("blue-0")
        for _ in range(20):
            assert (await post(client, router))[0] == 200
        assert revived.seen, "the re-admitted replica receives traffic again"
    finally:
        await runner.cleanup()


async def test_no_retry_once_the_request_may_have_reached_a_model(make_router, upstreams, client):
    [resetting, other] = upstreams
    resetting.respond = Script(fault="reset")
    router = await make_router(table(deployment("blue", [resetting.port, other.port])))
    outcomes = []
    for _ in range(40):  # ties are broken at random: send until the resetting replica got some
        outcomes.append(await post(client, router))
        if sum(1 for status, _, _ in outcomes if status == 502) >= 2:
            break
    failed = [headers["x-request-id"] for status, headers, _ in outcomes if status == 502]
    assert failed, "some requests went to the resetting replica"
    seen_by_other = {s.header("x-request-id") for s in other.seen}
    assert not seen_by_other & set(failed), "a request the model may have seen was sent again"
    assert {s.header("x-request-id") for s in resetting.seen} >= set(failed)


async def test_rate_limit_is_a_429_with_its_own_code(make_router, upstreams, client):
    [server, _] = upstreams
    router = await make_router(table(deployment("blue", [server.port], max_concurrent_requests_per_instance=8),
                                     rate_limit=(2.0, 5)))
    outcomes = [await post(client, router) for _ in range(8)]
    assert [s for s, _, _ in outcomes] == [200] * 5 + [429] * 3
    assert json.loads(outcomes[-1][2])["code"] == "RateLimited" and int(outcomes[-1][1]["Retry-After"]) >= 1
    assert len(server.seen) == 5


async def test_a_caller_that_goes_away_frees_its_slot(make_router, upstreams, certs):
    [server, _] = upstreams
    server.respond = Script(fault="hang")
    router = await make_router(table(deployment("blue", [server.port])))
    connector = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url(router), data=b"{}", headers=AUTH,
                                    timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
    deadline = time.monotonic() + 5
    while router.in_flight.total() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert router.in_flight.total() == 0
