"""Guessing keys: failed attempts are throttled per client — on the scoring and the batch
job routes alike, counted together —, other clients are not affected, and no credential
is ever written to a metric label."""

from __future__ import annotations

import json
import shutil
import tempfile

import aiohttp
import pytest
from aiohttp import web

from router import RouterApp
from router.auth_throttle import AuthThrottle, AuthThrottled
from serving.batch.http import CLIENT_ADDRESS_HEADER
from serving.batch.manifests import parse_batch_all
from serving.batch.service import BatchService
from serving.manifests import read_documents
from serving.workers.batch_proxy import BatchProxy
from tests.functional.router_harness import AUTH, KEY, post
from tests.unit.batch.batch_support import write_batch_endpoint
from tls import client_context


async def test_failed_auth_is_throttled_per_client(make_router, upstream, certs):
    router = await make_router()
    attacker = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert), local_addr=("127.0.0.2", 0))
    honest = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert), local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=attacker) as bad, aiohttp.ClientSession(connector=honest) as good:
        statuses = [(await post(bad, router, headers={"Authorization": f"Bearer guess-{i}"}))[0] for i in range(25)]
        assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
        status, headers, body = await post(bad, router)  # even the right key, from this client, for now
        assert status == 429 and json.loads(body)["code"] == "AuthThrottled" and int(headers["Retry-After"]) >= 1
        assert (await post(good, router))[0] == 200  # another client is not affected
    assert len(upstream.seen) == 1


async def test_no_credential_in_metrics(make_router, upstream, certs):
    router = await make_router()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_cert))) as s:
        await post(s, router)
        await post(s, router, headers={"Authorization": "Bearer a-wrong-secret"})
    from prometheus_client import generate_latest
    text = generate_latest(router.recorder.registry).decode()
    assert KEY not in text and "a-wrong-secret" not in text
    assert AUTH["Authorization"] not in text


# -- the batch job routes on the scoring port ------------------------------------------------------

@pytest.fixture
async def batch(tmp_path):
    """A batch endpoint 'scorer' (key auth) served as the gateway serves it."""
    root = write_batch_endpoint(tmp_path / "eps")
    service = BatchService(tmp_path / "state", [tmp_path / "data"], scoring_url="https://gw:1")
    endpoints, deployments = parse_batch_all(read_documents([root]), service.endpoint_names(),
                                             service.deployment_keys())
    service.apply(endpoints, deployments)
    await service.start()
    yield service
    await service.close()


def _session(certs, address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs.ca_cert),
                                                                local_addr=(address, 0)))


async def _jobs(session: aiohttp.ClientSession, router: RouterApp, key: str, headers=None):
    async with session.get(f"https://127.0.0.1:{router.port}/api/v1/batch/scorer/jobs",
                           headers={"Authorization": f"Bearer {key}", "x-request-id": "batch-guess",
                                    **(headers or {})}) as r:
        return r.status, r.headers, await r.read()


async def test_failed_auth_on_the_batch_routes_is_throttled_per_client(make_router, batch, certs):
    router = await make_router(app={"extra_routes": batch.routes()})
    key = batch.keys("scorer")[0]
    async with _session(certs, "127.0.0.2") as bad, _session(certs, "127.0.0.3") as good:
        statuses = [(await _jobs(bad, router, f"guess-{i}"))[0] for i in range(25)]
        assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
        status, headers, body = await _jobs(bad, router, key)  # even the right key, from this client, for now
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert json.loads(body) == {"code": "AuthThrottled", "request_id": "batch-guess",
                                    "message": "too many failed authentication attempts from this client"}
        assert headers["x-request-id"] == "batch-guess"
        assert (await _jobs(good, router, key))[0] == 200  # another client is not affected


async def test_batch_and_scoring_failures_count_together_until_the_block_ends(make_router, batch, certs, upstream):
    now = [1000.0]
    throttle = AuthThrottle(clock=lambda: now[0])
    router = await make_router(app={"extra_routes": batch.routes(auth_throttle=throttle), "auth_throttle": throttle})
    key = batch.keys("scorer")[0]
    async with _session(certs, "127.0.0.2") as bad:
        for i in range(10):
            assert (await _jobs(bad, router, f"guess-{i}"))[0] == 401
            assert (await post(bad, router, headers={"Authorization": f"Bearer guess-{i}"}))[0] == 401
        status, headers, body = await post(bad, router)  # right keys on both paths: refused for now
        assert status == 429 and json.loads(body)["code"] == "AuthThrottled" and int(headers["Retry-After"]) == 30
        assert (await _jobs(bad, router, key))[0] == 429
        now[0] += 29.5
        status, headers, _ = await _jobs(bad, router, key)
        assert status == 429 and headers["Retry-After"] == "1"
        now[0] += 1  # the block is over
        assert (await _jobs(bad, router, key))[0] == 200
        assert (await post(bad, router))[0] == 200
    assert len(upstream.seen) == 1


async def test_behind_workers_the_batch_throttle_counts_each_caller_not_the_worker(certs, batch, make_router):
    """With --workers, a worker passes batch requests to the main process over a Unix
    socket (serving/workers/batch_proxy.py): the caller's address must go with them, or
    one client's guesses would lock every caller out of the batch routes."""
    folder = tempfile.mkdtemp(prefix="sg-", dir="/tmp")  # a Unix socket path is short
    main = web.AppRunner(_app(batch.routes()), access_log=None, handle_signals=False)
    await main.setup()
    proxy = BatchProxy(f"{folder}/batch.sock")
    try:
        await web.UnixSite(main, f"{folder}/batch.sock").start()
        await proxy.start()
        worker = await make_router(app={"extra_routes": proxy.routes()})
        key = batch.keys("scorer")[0]
        async with _session(certs, "127.0.0.2") as bad, _session(certs, "127.0.0.3") as good:
            forged = {CLIENT_ADDRESS_HEADER: "127.0.0.9"}  # a caller's own copy is not believed
            statuses = [(await _jobs(bad, worker, f"guess-{i}", forged))[0] for i in range(25)]
            assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
            status, headers, body = await _jobs(bad, worker, key)
            assert status == 429 and json.loads(body)["code"] == "AuthThrottled" and int(headers["Retry-After"]) >= 1
            assert (await _jobs(good, worker, key))[0] == 200  # another client is not affected
    finally:
        await proxy.close()
        await main.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_tcp_caller_cannot_name_its_own_address(certs, batch, make_router):
    router = await make_router(app={"extra_routes": batch.routes()})
    async with _session(certs, "127.0.0.2") as bad:
        for i in range(25):  # a new address each time: were it believed, never throttled
            status, _, _ = await _jobs(bad, router, "guess", {CLIENT_ADDRESS_HEADER: f"10.0.0.{i}"})
        assert status == 429


def _app(routes) -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


def test_an_ipv6_caller_cannot_rotate_addresses_within_its_64_to_keep_guessing():
    """A host given an IPv6 /64 has 2**64 addresses: failures count per /64, as one
    client. IPv4 addresses (and IPv4-mapped IPv6 ones) still count one by one."""
    throttle = AuthThrottle(max_failures=3)
    for n in range(3):
        throttle.failed(f"2001:db8:1:2::{n + 1:x}")
    for blocked in ("2001:db8:1:2::99", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:0db8:0001:0002::1"):
        with pytest.raises(AuthThrottled):
            throttle.check(blocked)
    throttle.check("2001:db8:1:3::1")  # the next /64: another client
    for n in range(3):
        throttle.failed(f"::ffff:192.0.2.{n + 1}")
        throttle.failed(f"198.51.100.{n + 1}")
    for other in ("::ffff:192.0.2.9", "192.0.2.9", "198.51.100.9", "not-an-address", None):
        throttle.check(other)
