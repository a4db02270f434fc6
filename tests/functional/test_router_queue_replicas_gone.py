"""Requests waiting in a deployment's queue when its last replica leaves the routing table
(it crashed, was scaled away, or the deployment was deleted) are answered at once with
the contract's 503 for "no ready replica", not held until their queue wait is over and
then refused as 429 QueueWaitTimeout, which tells a caller that the deployment is busy
when it has nothing to serve with."""

from __future__ import annotations

import asyncio
import json
import time

from tests.fakes.recording_upstream import Script
from tests.functional.router_harness import deployment, post, table


async def _until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _queued_behind_a_hanging_request(make_router, upstream, client):
    upstream.respond = Script(fault="hang")
    router = await make_router(table(deployment("blue", [upstream.port], max_concurrent_requests_per_instance=1,
                                                max_queue_wait_ms=60_000)), queue_depth_factor=4)
    first = asyncio.create_task(post(client, router))  # takes the only slot and hangs
    await _until(lambda: upstream.in_flight == 1)
    queued = [asyncio.create_task(post(client, router)) for _ in range(2)]
    await _until(lambda: router.admission.queued(("ep", "blue")) == 2)
    return router, first, queued


async def test_queued_requests_get_503_when_the_last_replica_leaves(make_router, upstream, client):
    router, first, queued = await _queued_behind_a_hanging_request(make_router, upstream, client)
    router.holder.swap(table(deployment("blue", [], max_concurrent_requests_per_instance=1,
                                        max_queue_wait_ms=60_000), version=2))
    done, _ = await asyncio.wait(queued, timeout=30)
    assert len(done) == 2, "queued requests still waiting after their replicas left"
    for status, headers, body in [task.result() for task in queued]:
        assert status == 503 and "Retry-After" in headers, body
        assert json.loads(body)["code"] == "NoReadyReplica"
    upstream.hanging.set()
    assert (await first)[0] == 200
    assert len(upstream.seen) == 1


async def test_queued_requests_get_503_when_their_deployment_is_removed(make_router, upstream, client):
    router, first, queued = await _queued_behind_a_hanging_request(make_router, upstream, client)
    router.holder.swap(table(deployment("green", [upstream.port]), version=2))
    done, _ = await asyncio.wait(queued, timeout=30)
    assert len(done) == 2, "queued requests still waiting after their deployment left"
    for status, _headers, body in [task.result() for task in queued]:
        assert status == 503 and json.loads(body)["code"] == "NoReadyReplica", body
    upstream.hanging.set()
    await first
