"""What callers and operators see of a request: Server-Timing, W3C trace context to the
model and back, the JSON access log, OpenTelemetry spans when a provider is set."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from tests.fakes.recording_upstream import Script
from tests.functional.router_harness import AUTH, deployment, post, table, url














async def test_server_timing_splits_queue_model_and_gateway(make_router, upstream, client):
    upstream.respond = Script(delay_s=0.05)
    router = await make_router()
    status, headers, _ = await post(client, router)
    assert status == 200
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", headers["Server-Timing"]))
    assert set(timing) == {"queue", "model", "gateway"}
    assert float(timing["model"]) >= 50 and float(timing["gateway"]) < float(timing["model"])
    status, headers, _ = await post(client, router, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "gateway;dur=" in headers["Server-Timing"]


async def test_a_queue_wait_that_ends_in_a_429_is_queue_time(make_router, upstream, client, tmp_path):
    """The wait was booked as the gateway's own time (Server-Timing, the access log, the
    gateway-overhead histogram) when it ended in QueueWaitTimeout."""
    upstream.respond = Script(delay_s=0.6)
    path = tmp_path / "access.log"
    router = await make_router(table(deployment("blue", [upstream.port], max_concurrent_requests_per_instance=1,
                                                max_queue_wait_ms=200)), access_log=str(path))
    first = asyncio.ensure_future(post(client, router))
    await asyncio.sleep(0.1)  # the first holds the only slot (its model takes 0.6 s)
    status, headers, body = await post(client, router)
    assert status == 429 and json.loads(body)["code"] == "QueueWaitTimeout"
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", headers["Server-Timing"]))
    assert float(timing["queue"]) >= 150 and float(timing["gateway"]) < float(timing["queue"]), timing
    assert (await first)[0] == 200
    await router.access_log.close()
    refused = [json.loads(line) for line in path.read_text().splitlines() if '"status":429' in line][0]
    assert refused["queue_ms"] >= 150 and refused["gateway_ms"] < refused["queue_ms"], refused


async def test_answers_made_before_any_endpoint_are_counted_and_logged(make_router, upstream, client, tmp_path):
    """A wrong method or path was answered (405, 404) but counted nowhere: not in
    scoregate_requests_total, not in the access log. And the size of every error body the
    gateway writes itself is its bytes_out, not 0."""
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path))
    async with client.get(url(router)) as r:
        assert r.status == 405
    async with client.post(url(router).replace("/api/v1/endpoint/", "/api/v1/nowhere/"), data=b"{}") as r:
        assert r.status == 404
    status, _, _ = await post(client, router, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    await router.access_log.close()
    lines = {line["status"]: line for line in map(json.loads, path.read_text().splitlines())}
    assert {s: (lines[s]["code"], lines[s]["endpoint"]) for s in lines} == {
        405: ("MethodNotAllowed", None), 404: ("NotFound", None), 401: ("Unauthorized", "ep")}
    assert all(line["bytes_out"] > 50 for line in lines.values()), lines  # the JSON error bodies
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_requests_total", {"endpoint": "-", "deployment": "-", "status": "405",
                                              "code": "MethodNotAllowed"}) == 1


async def test_a_caller_that_leaves_before_its_answer_is_logged_as_499(make_router, upstream, client, tmp_path):
    upstream.respond = Script(delay_s=1.0)
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path))
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(url(router), data=b"{}", headers=AUTH, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    value = router.recorder.registry.get_sample_value
    labels = {"endpoint": "ep", "deployment": "blue", "status": "499", "code": "ClientClosedRequest"}
    async with asyncio.timeout(10):  # the gateway notices the closed connection
        while value("scoregate_requests_total", labels) != 1:
            await asyncio.sleep(0.02)
    await router.access_log.close()
    [line] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (line["status"], line["code"]) == (499, "ClientClosedRequest")


async def test_trace_context_goes_to_the_model_and_back(make_router, upstream, client):
    router = await make_router()
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, headers, _ = await post(client, router, headers={"traceparent": incoming, "tracestate": "vendor=a1"})
    seen = upstream.seen[-1]
    version, trace_id, span_id, flags = seen.header("traceparent").split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7"  # the gateway's own hop
    assert seen.header("tracestate") == "vendor=a1"
    assert headers["traceparent"] == seen.header("traceparent")
    # No (or a broken) traceparent: a new trace starts at the gateway.
    await post(client, router, headers={"traceparent": "garbage"})
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", upstream.seen[-1].header("traceparent"))


async def test_access_log_lines(make_router, upstream, client, tmp_path):
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path))
    await post(client, router, body=b'{"secret-body": 1}', headers={"x-request-id": "req-1"})
    await post(client, router, headers={"Authorization": "Bearer not-the-key"})
    await router.access_log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["status"] for line in lines] == [200, 401]
    ok, refused = lines
    assert ok["request_id"] == "req-1" and ok["endpoint"] == "ep" and ok["deployment"] == "blue"
    assert ok["replica"] == "blue-0" and ok["bytes_in"] == len(b'{"secret-body": 1}')
    assert ok["bytes_out"] == len(b'{"ok": true}') and ok["method"] == "POST"
    assert ok["path"] == "/api/v1/endpoint/ep/score"
    assert ok["duration_ms"] >= ok["upstream_ms"] >= 0 and ok["gateway_ms"] >= 0
    assert refused["code"] == "Unauthorized"
    text = path.read_text()
    assert "secret-body" not in text and "not-the-key" not in text and AUTH["Authorization"][7:] not in text


async def test_access_log_sampling_keeps_every_error(make_router, upstream, client, tmp_path):
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path), access_log_sample_rate=0.0)
    for _ in range(5):
        await post(client, router)
    await post(client, router, headers={"Authorization": "Bearer nope"})
    await router.access_log.close()
    assert [json.loads(line)["status"] for line in path.read_text().splitlines()] == [401]


async def test_a_failing_log_sink_never_fails_a_request(make_router, upstream, client, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    router = await make_router(access_log=str(blocked / "access.log"))  # parent is a file: writes fail
    for _ in range(3):
        assert (await post(client, router))[0] == 200
    async with asyncio.timeout(5):  # the writer has tried all three lines (it flushes every 0.2 s)
        while router.access_log.dropped + router.access_log.written < 3:
            await asyncio.sleep(0.02)
    assert router.access_log.dropped == 3 and router.access_log.written == 0
    # counted where an operator can alert on it, not only in the gateway log
    assert router.recorder.registry.get_sample_value("scoregate_access_log_dropped_lines_total") == 3


async def test_opentelemetry_spans_for_the_stages(make_router, upstream, client):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = await make_router(tracer_provider=provider)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    _, headers, _ = await post(client, router, headers={"traceparent": incoming})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"scoregate.score", "scoregate.upstream"} <= set(spans)
    root = spans["scoregate.score"]
    assert f"{root.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert root.attributes["scoregate.endpoint"] == "ep" and root.attributes["http.response.status_code"] == 200
    assert spans["scoregate.upstream"].parent.span_id == root.context.span_id
    assert upstream.seen[-1].header("traceparent") == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"
