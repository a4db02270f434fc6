"""Request smuggling and desync on a connection the scoring port hands to aiohttp (the
batch job routes, `extra_routes`) and, since the hand-over keeps the connection, takes
back for the next request (router/http1.py: _hand_over, _take_back; router/handover.py).

Each test sends raw bytes and asserts what the caller sees on its connection: one answer
per request, in order, never a second answer to one request or one inside another, and
what the model (the recording upstream) saw."""

from __future__ import annotations

import asyncio
import json
import ssl

import pytest
from aiohttp import web

from router.listener import ConnectionLimits
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
          web.route("*", "/api/v1/batch/echo", _echo), web.route("*", "/api/v1/batch/t/{tail:.*}", _echo)]


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


# -- a pipelined mix, each request answered once and in order ------------------------------

BATCH = b"/api/v1/batch/echo"
PIPELINE = [  # (request bytes, expected status, expected body or None for a scoring answer)
    (SCORE + b"Content-Length: 7\r\n\r\n{\"a\":1}", 200, None),
    (b"POST " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3;ext=1\r\nab\n\r\n4\r\n\r\n\r\n\r\n0\r\nX-Trailer: POST /smuggled HTTP/1.1\r\n\r\n", 200, b"echo:ab\n\r\n\r\n"),
    (SCORE + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 200, None),
    (b"POST " + BATCH + b" HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\nContent-Length: 20\r\n\r\n"
     b"0\r\n\r\nGET /x HTTP/1.1", 200, b"echo:0\r\n\r\nGET /x HTTP/1.1"),
    (b"OPTIONS " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 200, b"echo:"),
    (b"PUT " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok", 200,
     b"echo:ok"),
    (b"GET " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", 200, b"echo:"),
    (SCORE + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}", 200, None),
]


async def _answers(reader: asyncio.StreamReader, count: int) -> list[tuple[int, dict, bytes]]:
    from tests.functional.test_http1_server import read_answer

    answers = []
    while len(answers) < count:
        answer = await read_answer(reader)
        if answer[0] != 100:  # the interim answer to the Expect request
            answers.append(answer)
    return answers


@pytest.mark.parametrize("piece", [0, 1, 5, 64], ids=["whole", "byte-by-byte", "5-bytes", "64-bytes"])
async def test_pipelined_scoring_and_handed_over_requests_each_get_their_own_answer(
        make_router, upstream, raw, piece):
    """Scoring and batch requests with bodies (chunked with an extension and a trailer that
    looks like a request, a body that looks like a chunked end and a request line, HTTP/1.0
    kept alive, OPTIONS, Expect: 100-continue), sent in one write or cut into pieces (each
    its own TLS record): every request is answered once, in order, with its own body."""
    router = await make_router(app={"extra_routes": ROUTES})
    reader, writer = await raw(router).open()
    data = b"".join(request for request, _, _ in PIPELINE)
    if piece == 0:
        writer.write(data)
    else:
        for start in range(0, len(data), piece):
            writer.write(data[start:start + piece])
            await writer.drain()
    answers = await _answers(reader, len(PIPELINE))
    rest, closed = await _received(reader)
    writer.close()
    assert [a[0] for a in answers] == [status for _, status, _ in PIPELINE]
    for (_, _, body), (_, headers, got) in zip(PIPELINE, answers):
        if body is not None:
            assert got == body
        else:
            assert got == b'{"ok": true}' and "azureml-model-deployment" in headers
    assert answers[-1][1]["connection"] == "close" and closed and rest == b""
    assert [s.body for s in upstream.seen] == [b'{"a":1}', b"{}", b"{}"]
    assert not any("smuggled" in s.path_qs for s in upstream.seen)


# -- a handed-over body that stops arriving --------------------------------------------------

@pytest.mark.parametrize("framing", [b"Content-Length: 10\r\n\r\nabc", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"],
                         ids=["content-length", "chunked"])
async def test_a_handed_over_body_that_stops_arriving_is_408_and_closed(make_router, upstream, raw, framing):
    """As a scoring request's body: the caller cannot hold the connection (and aiohttp's
    handler) for ever by sending part of a batch request's body. Nothing received for the
    keep-alive timeout: 408 (nothing of aiohttp's answer went out) and the connection closed."""
    router = await make_router(keepalive_timeout_s=0.2, app={"extra_routes": ROUTES})
    received, closed = await raw(router).exchange(
        b"POST " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\n" + framing, timeout_s=1.5)
    assert closed, received
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"\r\nConnection: close" in head
    assert json.loads(body)["code"] == "ClientRequestTimeout"


async def test_a_handed_over_body_that_keeps_arriving_is_not_cut(make_router, upstream, raw):
    router = await make_router(keepalive_timeout_s=0.3, app={"extra_routes": ROUTES})
    reader, writer = await raw(router).open()
    writer.write(b"POST " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\n")
    for part in (b"a", b"b", b"c", b"d"):
        await asyncio.sleep(0.1)  # each part within the timeout, all of them over it
        writer.write(part)
    answers = await _answers(reader, 1)
    writer.close()
    assert answers[0][0] == 200 and answers[0][2] == b"echo:abcd"


# -- framing attacks on a handed-over path, and limits ---------------------------------------

_BATCH_HEAD = b"POST " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\n"
_SMUGGLED = b"POST /api/v1/batch/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8\r\n\r\nsmuggled"
BATCH_ATTACKS = {
    "content-length and transfer-encoding": _BATCH_HEAD + b"Content-Length: 81\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"0\r\n\r\n" + _SMUGGLED,
    "transfer-encoding then content-length": _BATCH_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                                             b"0\r\n\r\n" + _SMUGGLED,
    "duplicate content-length": _BATCH_HEAD + b"Content-Length: 0\r\nContent-Length: 81\r\n\r\n" + _SMUGGLED,
    "two transfer-encodings": _BATCH_HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
                              b"0\r\n\r\n" + _SMUGGLED,
    "obfuscated transfer-encoding": _BATCH_HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "transfer-encoding in HTTP/1.0": _BATCH_HEAD.replace(b"1.1", b"1.0") + b"Transfer-Encoding: chunked\r\n\r\n"
                                     b"0\r\n\r\n" + _SMUGGLED,
    "bad chunk size": _BATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n" + _SMUGGLED,
    "chunk size with a space": _BATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0 \r\n\r\n" + _SMUGGLED,
    "bare LF after the chunk size": _BATCH_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\n\r\n" + _SMUGGLED,
    "space before the colon": _BATCH_HEAD + b"Content-Length : 81\r\n\r\n" + _SMUGGLED,
}


@pytest.mark.parametrize("payload", BATCH_ATTACKS.values(), ids=BATCH_ATTACKS.keys())
async def test_ambiguous_framing_on_a_handed_over_path_is_refused_before_aiohttp(make_router, upstream, raw, payload):
    """Our parser decides for aiohttp's routes too: an ambiguous request is the gateway's
    JSON 400 with the connection closed; aiohttp's handler never runs (no echo)."""
    router = await make_router(app={"extra_routes": ROUTES})
    received, closed = await raw(router).exchange(payload, timeout_s=2)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and closed, received[:300]
    assert json.loads(body)["code"] == "BadRequest" and b"echo:" not in received


async def test_max_requests_reached_on_a_handed_over_request_closes_after_its_answer(make_router, upstream, raw):
    router = await make_router(limits=ConnectionLimits(max_requests_per_connection=2), app={"extra_routes": ROUTES})
    reader, writer = await raw(router).open()
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}" + _BATCH_HEAD + b"Content-Length: 1\r\n\r\nx"
                 + SCORE + b"Content-Length: 2\r\n\r\n{}")
    answers = await _answers(reader, 2)
    rest, closed = await _received(reader)
    writer.close()
    assert [a[0] for a in answers] == [200, 200] and answers[1][2] == b"echo:x"
    assert answers[1][1]["connection"] == "close" and closed and rest == b""
    assert len(upstream.seen) == 1  # the third request was never read


@pytest.mark.parametrize("method", [b"HEAD", b"OPTIONS"])
async def test_head_and_options_on_a_handed_over_path(make_router, upstream, raw, method):
    """HEAD: its answer's framing cannot be followed, so the connection ends with it (a
    pipelined request after it is not read). OPTIONS: followed, the next request served."""
    router = await make_router(app={"extra_routes": ROUTES})
    reader, writer = await raw(router).open()
    writer.write(method + b" " + BATCH + b" HTTP/1.1\r\nHost: localhost\r\n\r\n" + SCORE + b"Content-Length: 2\r\n\r\n{}")
    from tests.functional.test_http1_server import read_answer

    first = await read_answer(reader, head_only=method == b"HEAD")
    if method == b"HEAD":
        rest, closed = await _received(reader)
        assert first[0] == 200 and first[1]["connection"] == "close" and closed and rest == b""
        assert upstream.seen == []
    else:
        second = await read_answer(reader)
        assert (first[0], first[2], second[0], len(upstream.seen)) == (200, b"echo:", 200, 1)
    writer.close()


# -- the hand-over decision: batch paths never reach a model, scoring paths never aiohttp ----

ROUTING = {  # path: (who answers, status): "aiohttp" (the echo route, or its not-found) or "gateway"
    "/api/v1/batch/echo": ("aiohttp", 200),
    "/api/v1/%62atch/%65cho": ("aiohttp", 200),  # decoded by both alike
    "/api/v1/batch%2Fecho": ("gateway", 404),  # an encoded '/' is not a separator
    "//api/v1/batch/echo": ("gateway", 404),
    "/API/v1/batch/echo": ("gateway", 404),
    "/api/v1/batch/./echo": ("gateway", 404),  # not the route's path as written
    "/api/v1/batch/../endpoint/ep/score": ("gateway", 404),
    "/api/v1/batch/t/x": ("aiohttp", 200),  # under a route's prefix
    "/api/v1/batch/t/../../endpoint/ep/score": ("aiohttp", 200),  # dots not resolved: the batch route's
    "/api/v1/batch/t/%2e%2e/%2e%2e/endpoint/ep/score": ("aiohttp", 200),
    "/api/v1/endpoint/ep/../../batch/echo": ("gateway", 400),  # dot segments under an endpoint
    "/api/v1/endpoint/%2e%2e/batch/echo": ("gateway", 404),
    "/api/v1/endpoint/ep/score#/api/v1/batch/echo": ("gateway", 401),  # scoring: needs its key
    "/api/v1/batch/echo#/../../endpoint/ep/score": ("aiohttp", 200),
}


@pytest.mark.parametrize("path", ROUTING, ids=ROUTING)
async def test_the_hand_over_decision_cannot_cross_routes(make_router, upstream, raw, path):
    """Percent-encoding, `//`, dot segments, case and fragments: a path goes to aiohttp
    only if it is under the batch prefix as aiohttp's router reads it; nothing without a
    credential reaches a model; scoring paths are never served by aiohttp."""
    router = await make_router(app={"extra_routes": ROUTES})
    answer = await raw(router).response(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                                        b"Content-Length: 2\r\n\r\n{}")
    who, status = ROUTING[path]
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert (b"echo:" in answer) == (who == "aiohttp" and status == 200)
    assert router._listener.hands_over(path.split("#")[0]) == (who == "aiohttp")  # noqa: SLF001
    assert upstream.seen == []


async def test_plain_http_hand_over_keeps_the_same_order_and_refuses_a_malformed_body(upstream):
    """The same over plain TCP (the hand-over's transport is then the socket's own)."""
    from router import RouterApp, RouterSettings, RoutingTableHolder
    from tests.functional.router_harness import deployment, table

    router = RouterApp(RouterSettings(port=0, ssl_context=None),
                       RoutingTableHolder(table(deployment("blue", [upstream.port]))), extra_routes=ROUTES)
    await router.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"".join(request for request, _, _ in PIPELINE))
        answers = await _answers(reader, len(PIPELINE))
        rest, closed = await _received(reader)
        writer.close()
        assert [a[0] for a in answers] == [status for _, status, _ in PIPELINE] and closed and rest == b""
        assert [s.body for s in upstream.seen] == [b'{"a":1}', b"{}", b"{}"]
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"POST /api/v1/batch/early HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n")
        async with asyncio.timeout(2):
            await reader.readuntil(b"early")
        writer.write(b"zz\r\n" + SCORE + b"Content-Length: 2\r\n\r\n{}")
        rest, closed = await _received(reader)
        writer.close()
        assert closed and rest == b"" and len(upstream.seen) == 3
    finally:
        await router.drain(1)
        await router.close()
