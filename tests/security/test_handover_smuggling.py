"""Request smuggling and desync on a connection the scoring port hands to aiohttp (the
batch job routes, `extra_routes`) and, since the hand-over keeps the connection, takes
back for the next request (router/http1.py: _hand_over, _HandedOver, _take_back).

Each test sends raw bytes and asserts what the caller sees on its connection: one answer
per request, in order, never a second answer to one request or one inside another, and
what the model (the recording upstream) saw."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web

from tests.functional.router_harness import AUTH

KEY = AUTH["Authorization"].encode()
SCORE = b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY + b"\r\n"


async def _early(request: web.Request) -> web.Response:
    return web.Response(text="early")  # answered before (without) reading the body


async def _streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"part1")  # the answer is under way while the body arrives
    body = await request.read()
    await response.write(b"got:" + body)
    await response.write_eof()
    return response


async def _echo(request: web.Request) -> web.Response:
    return web.Response(body=b"echo:" + await request.read())


ROUTES = [web.post("/api/v1/batch/early", _early), web.post("/api/v1/batch/streamed", _streamed),
          web.route("*", "/api/v1/batch/echo", _echo)]


async def _received(reader: asyncio.StreamReader, timeout_s: float = 2.0) -> tuple[bytes, bool]:
    """Everything until the server ends the connection: (bytes, whether it did in time)."""
    received = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                received += chunk
        return received, True
    except (ConnectionError, ssl.SSLError):
        return received, True
    except TimeoutError:
        return received, False


@pytest.mark.parametrize("route", [b"early", b"streamed"])
@pytest.mark.parametrize("connection", [b"", b"Connection: close\r\n"], ids=["keep-alive", "close"])
async def test_a_malformed_body_of_a_handed_over_request_never_adds_a_second_answer(
        make_router, upstream, raw, route, connection):
    """The chunked body turns out malformed after aiohttp began (or finished) its answer:
    the caller sees aiohttp's answer only (whole or cut), never a 400 after it or inside it,
    and the connection ends at once (nothing more can be framed on it)."""
    router = await make_router(app={"extra_routes": ROUTES})
    reader, writer = await raw(router).open()
    writer.write(b"POST /api/v1/batch/" + route + b" HTTP/1.1\r\nHost: localhost\r\n" + connection
                 + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    async with asyncio.timeout(2):
        head = await reader.readuntil(b"\r\n\r\n")  # aiohttp's answer began
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    writer.write(b"zz\r\n" + SCORE + b"Content-Length: 2\r\n\r\n{}")
    rest, closed = await _received(reader)
    writer.close()
    assert closed, rest
    assert b"HTTP/1.1" not in rest, rest  # no second status line on the connection
    assert upstream.seen == []


async def test_a_malformed_body_before_aiohttp_answers_is_refused_with_400(make_router, upstream, raw):
    """Nothing of aiohttp's answer went out yet: the refusal is the answer (JSON 400, closed)."""
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)  # answers nothing; cancelled when the connection ends
        return web.Response()

    router = await make_router(app={"extra_routes": [web.post("/api/v1/batch/slow", slow)]})
    received, closed = await raw(router).exchange(
        b"POST /api/v1/batch/slow HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\nzz\r\n", timeout_s=2)
    assert closed
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\nConnection: close" in head
    assert json.loads(body)["code"] == "BadRequest"
