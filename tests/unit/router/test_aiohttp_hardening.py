"""router.aiohttp_hardening on a real aiohttp server: what aiohttp refuses before any
handler or middleware is a JSON 400 and one DEBUG line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp import web

from router.aiohttp_hardening import app_runner, short_reason


async def hello(request):
    return web.Response(text="hi")


async def failing(request):
    raise RuntimeError("a defect")


@pytest.fixture
async def port():
    app = web.Application()
    app.add_routes([web.get("/", hello), web.get("/fail", failing)])
    runner = app_runner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def raw(port: int, data: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 5)  # every answer here closes the connection
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], {n.lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}, body


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a TLS hello on plain HTTP\r\n\r\n",
], ids=["no host", "two lengths", "negative length", "not http"])
async def test_a_malformed_request_is_a_json_400_and_one_debug_line(port, request_bytes, caplog):
    caplog.set_level(logging.DEBUG)
    status_line, headers, body = await raw(port, request_bytes)
    # HTTP/1.1 as every other answer of the gateway (aiohttp said HTTP/1.0 for a request it could not read)
    assert status_line == "HTTP/1.1 400 Bad Request" and headers["connection"] == "close"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["code"] == "BadRequest" and error["request_id"] == headers["x-request-id"]
    assert error["message"].startswith("malformed request: ") and "\n" not in error["message"]
    records = [r for r in caplog.records if r.name.startswith("aiohttp") or r.name == "scoregate.aiohttp"]
    assert [(r.name, r.levelno) for r in records] == [("scoregate.aiohttp", logging.DEBUG)]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()


async def test_a_handler_failure_is_a_json_500_with_its_traceback_in_the_log(port, caplog):
    caplog.set_level(logging.DEBUG)
    status_line, headers, body = await raw(port, b"GET /fail HTTP/1.1\r\nHost: a\r\nx-request-id: op-7\r\n\r\n")
    assert status_line.split()[1] == "500" and headers["x-request-id"] == "op-7"
    assert json.loads(body) == {"code": "InternalError", "message": "the gateway failed to handle the request",
                                "request_id": "op-7"}
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "scoregate.aiohttp" and "op-7" in record.getMessage() and record.exc_info


async def test_well_formed_requests_are_served_as_before(port):
    status_line, _, body = await raw(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_line == "HTTP/1.1 200 OK" and body == b"hi"


async def test_no_answer_names_the_server_software(port):
    for request_bytes in (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # a handler's answer
                          b"GET /nowhere HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",  # aiohttp's 404
                          b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n",  # a failed handler
                          b"GET / HTTP/1.1\r\n\r\n"):  # a malformed request
        _, headers, _ = await raw(port, request_bytes)
        assert "server" not in headers, (request_bytes, headers)


def test_the_reason_is_one_bounded_printable_line_without_the_quoted_bytes():
    assert short_reason("Duplicate Content-Length:\n\n  b'Content-Length: 2'\n       ^") == "Duplicate Content-Length"
    assert short_reason("bad\x1b[31m line\r\nsecond") == "bad[31m line"
    assert len(short_reason("x" * 10_000)) == 120
    assert short_reason(None) == short_reason("\n") == "unreadable request"
