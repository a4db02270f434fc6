"""The small parts of `serve --workers`: the channel between processes (over a real
socketpair), routing tables crossing it intact, the workers' metrics merged into one
valid exposition, per-worker access-log files, whole access-log lines on a shared pipe."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from router.accesslog import _whole_line_chunks
from router.routing_table import DeploymentRoute, EndpointRoute, Replica, RequestSettings, RoutingTable
from serving.workers.channel import MAX_FRAME, Channel, ChannelClosed
from serving.workers.metrics import WorkerMetrics, merge_worker_metrics
from serving.workers.worker import worker_access_log


async def _pair(handler_a, handler_b):
    a, b = socket.socketpair()
    first, second = await Channel.over(a, handler_a), await Channel.over(b, handler_b)
    tasks = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    return first, second, tasks


async def test_requests_get_answers_and_errors_come_back_as_errors():
    seen = []

    def worker_side(message):
        seen.append(message["op"])
        if message["op"] == "boom":
            raise ValueError("bad")
        return {"echo": message.get("value")}

    main, worker, tasks = await _pair(lambda m: None, worker_side)
    assert await main.request({"op": "echo", "value": [1, 2]}) == {"echo": [1, 2]}
    with pytest.raises(RuntimeError, match="ValueError: bad"):
        await main.request({"op": "boom"})
    main.send({"op": "note"})  # no answer wanted
    assert await main.request({"op": "echo", "value": 3}) == {"echo": 3}
    assert seen == ["echo", "boom", "note", "echo"]
    worker.close()
    await asyncio.wait_for(tasks[0], 5)  # the main side sees the end
    assert main.closed
    with pytest.raises(ChannelClosed):
        main.send({"op": "late"})
    for task in tasks:
        task.cancel()


async def test_a_request_to_a_process_that_goes_away_fails_at_once():
    never = asyncio.Event()

    async def stuck(_message):
        await never.wait()

    main, worker, tasks = await _pair(lambda m: None, stuck)
    pending = asyncio.create_task(main.request({"op": "slow"}, timeout_s=30))
    await asyncio.sleep(0.05)
    tasks[1].cancel()
    worker.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(pending, 5)
    tasks[0].cancel()


async def test_an_oversized_frame_is_refused_before_it_is_sent():
    main, _worker, tasks = await _pair(lambda m: None, lambda m: None)
    with pytest.raises(ValueError, match="frame limit"):
        main.send({"op": "big", "data": b"x" * (MAX_FRAME + 1)})
    for task in tasks:
        task.cancel()


async def test_a_routing_table_crosses_intact_and_stays_read_only():
    table = RoutingTable(7, {"iris": EndpointRoute(
        "iris", keys=("k1", "k2"), traffic=(("blue", 90), ("green", 10)), rate_limit=(5.0, 10),
        deployments={"blue": DeploymentRoute("blue", (Replica("blue-1", "127.0.0.1", 9000, scheme="https"),),
                                             RequestSettings(1000, 4, 50))})})
    got = []
    main, _worker, tasks = await _pair(lambda m: None, lambda m: got.append(m["table"]))
    await main.request({"op": "table", "table": table})
    assert got == [table]
    with pytest.raises(TypeError):
        got[0].endpoints["other"] = None  # still a read-only mapping
    with pytest.raises(TypeError):
        got[0].endpoints["iris"].deployments["x"] = None
    for task in tasks:
        task.cancel()


def _worker_text(requests: int, seconds: float) -> bytes:
    registry = CollectorRegistry()
    Counter("scoregate_requests", "Requests.", ["endpoint"], registry=registry).labels("iris").inc(requests)
    Histogram("scoregate_latency_seconds", "Latency.", registry=registry).observe(seconds)
    return generate_latest(registry)


def test_worker_metrics_merge_into_one_family_per_name_with_a_worker_label():
    merged = merge_worker_metrics({0: _worker_text(3, 0.01), 1: _worker_text(5, 2.0)})
    registry = CollectorRegistry()
    collector = WorkerMetrics()
    registry.register(collector)
    collector.families = merged
    text = generate_latest(registry).decode()
    assert text.count("# TYPE scoregate_requests_total counter") == 1
    assert 'scoregate_requests_total{endpoint="iris",worker="0"} 3.0' in text
    assert 'scoregate_requests_total{endpoint="iris",worker="1"} 5.0' in text
    assert text.count("# TYPE scoregate_latency_seconds histogram") == 1
    assert 'scoregate_latency_seconds_bucket{le="0.025",worker="0"} 1.0' in text
    assert 'scoregate_latency_seconds_bucket{le="0.025",worker="1"} 0.0' in text


def test_each_worker_writes_its_own_access_log_file():
    assert worker_access_log("/s/logs/access.log", 1) == "/s/logs/access-worker1.log"
    assert worker_access_log("-", 0) == "-" and worker_access_log(None, 0) is None


def test_access_log_lines_for_a_shared_pipe_are_whole_and_small():
    data = b"".join(b"x" * n + b"\n" for n in (10, 3000, 2000, 5000, 1))
    chunks = list(_whole_line_chunks(data, 4096))
    assert b"".join(chunks) == data and all(c.endswith(b"\n") for c in chunks)
    assert [len(c) for c in chunks] == [3012, 2001, 5001, 2]  # only a line longer than the limit goes alone
