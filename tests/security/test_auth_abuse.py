"""Guessing keys: failed attempts are throttled per client, other clients are not
affected, and no credential is ever written to a metric label."""

from __future__ import annotations

import json

import aiohttp

from tests.functional.router_harness import AUTH, KEY, post
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
