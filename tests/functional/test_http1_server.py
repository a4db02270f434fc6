"""The scoring port's own HTTP/1.1 server (router/http1.py) over real TLS sockets: what
a caller sees on one connection — order, keep-alive, HTTP/1.0, 100-continue, HEAD, and
routes handed to aiohttp (extra_routes) on the same port."""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web

from router import RouterApp, RouterSettings, RoutingTableHolder
from tests.fakes.recording_upstream import Script
from tests.functional.router_harness import AUTH, deployment, post, table
from tests.support.waiting import until
from tls import server_context

KEY = AUTH["Authorization"].encode()
SCORE = b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY + b"\r\n"


async def connect(certs, router):
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    return await asyncio.open_connection("127.0.0.1", router.port, ssl=context, server_hostname="localhost")


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One answer: (status, headers with lower-case names, body)."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if head_only or status in (100, 204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
            return status, headers, body
        return status, headers, await reader.read()  # until the connection ends


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(10):
            return await reader.read(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


async def test_pipelined_requests_are_answered_in_order(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(b"".join(SCORE + b"x-request-id: req-%d\r\nContent-Length: 2\r\n\r\n{}" % i for i in range(3)))
    answers = [await read_answer(reader) for _ in range(3)]
    writer.close()
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == \
        [(200, "req-0"), (200, "req-1"), (200, "req-2")]
    assert [seen.header("x-request-id") for seen in upstream.seen] == ["req-0", "req-1", "req-2"]


async def test_a_kept_alive_connection_reads_each_request_whole(make_router, upstream, certs):
    # Between requests an idle connection keeps no parser: each request, whether it comes
    # after an idle wait, began before the previous answer went out, or is pipelined, is
    # read whole with its own headers.
    router = await make_router()
    reader, writer = await connect(certs, router)

    def score(i: int) -> bytes:
        return SCORE + b"x-request-id: req-%d\r\nContent-Length: 2\r\n\r\n{}" % i

    answers = []
    for i in range(2):
        writer.write(score(i))
        answers.append(await read_answer(reader))
    writer.write(score(2) + score(3)[:7])
    answers.append(await read_answer(reader))
    writer.write(score(3)[7:])
    answers.append(await read_answer(reader))
    writer.write(score(4) + score(5))
    answers += [await read_answer(reader) for _ in range(2)]
    writer.close()
    ids = [f"req-{i}" for i in range(6)]
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == [(200, i) for i in ids]
    assert [seen.header("x-request-id") for seen in upstream.seen] == ids


async def test_trailers_of_a_chunked_request_are_not_headers_of_the_next(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nx-trailing: yes\r\n\r\n")
    first = await read_answer(reader)
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    second = await read_answer(reader)
    writer.close()
    assert first[0] == second[0] == 200
    assert [seen.header("x-trailing") for seen in upstream.seen] == [None, None]


async def test_a_head_arriving_byte_by_byte_is_served(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    for byte in SCORE + b"Content-Length: 2\r\n\r\n{}":
        writer.write(bytes([byte]))
        await writer.drain()
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200 and body == b'{"ok": true}' and upstream.seen[0].body == b"{}"


async def test_100_continue_only_once_the_request_is_accepted(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    status, _, _ = await read_answer(reader)
    assert status == 100
    writer.write(b"{}")
    status, _, body = await read_answer(reader)
    assert status == 200 and upstream.seen[0].body == b"{}"
    assert upstream.seen[0].header("Expect") is None
    # A wrong key: refused at once, and the body is never asked for.
    wrong = SCORE.replace(KEY, b"Bearer wrong")
    writer.write(wrong + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    status, headers, _ = await read_answer(reader)
    assert status == 401 and headers["connection"] == "close"
    writer.close()
    assert len(upstream.seen) == 1


async def test_an_unknown_expectation_is_417(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Expect: something-else\r\nContent-Length: 2\r\n\r\n{}")
    status, _, _ = await read_answer(reader)
    assert status == 417 and await closed_by_server(reader)
    writer.close()
    assert upstream.seen == []


async def test_http_1_0_closes_unless_asked_to_keep_alive(make_router, upstream, certs):
    router = await make_router()
    one_zero = SCORE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Content-Length: 2\r\n"
    reader, writer = await connect(certs, router)
    writer.write(one_zero + b"\r\n{}")
    status, _, _ = await read_answer(reader)
    assert status == 200 and await closed_by_server(reader)
    writer.close()
    reader, writer = await connect(certs, router)
    for _ in range(2):
        writer.write(one_zero + b"Connection: keep-alive\r\n\r\n{}")
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers["connection"].lower() == "keep-alive"
    writer.close()


async def test_a_streamed_answer_to_http_1_0_ends_with_the_connection(make_router, upstream, certs):
    router = await make_router()
    upstream.respond = Script(body=b"z" * 300_000, chunks=10)  # no length: streamed
    reader, writer = await connect(certs, router)
    writer.write(SCORE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Content-Length: 2\r\n\r\n{}")
    status, headers, body = await read_answer(reader)
    writer.close()
    assert status == 200 and "transfer-encoding" not in headers and body == b"z" * 300_000


async def test_a_streamed_answer_to_http_1_1_is_chunked_and_the_connection_kept(make_router, upstream, certs):
    router = await make_router()
    upstream.respond = Script(body=b"y" * 300_000, chunks=10)
    reader, writer = await connect(certs, router)
    for _ in range(2):
        writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
        status, headers, body = await read_answer(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"y" * 300_000
    writer.close()


async def test_head_gets_the_length_without_a_body(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(b"HEAD /api/v1/endpoint/ep/v2/ready HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY
                 + b"\r\n\r\n")
    status, headers, _ = await read_answer(reader, head_only=True)
    assert status == 200 and headers["content-length"] == str(len(b'{"ok": true}'))
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")  # the connection is still in step
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 200 and body == b'{"ok": true}'
    assert [seen.method for seen in upstream.seen] == ["HEAD", "POST"]


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(make_router, upstream, certs):
    router = await make_router(keepalive_timeout_s=0.3)
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    assert (await read_answer(reader))[0] == 200
    assert await closed_by_server(reader)
    writer.close()


async def test_extra_routes_are_served_by_aiohttp_on_the_same_port(make_router, upstream, certs):
    async def jobs(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"endpoint": request.match_info["endpoint"], "got": body.decode(),
                                  "scheme": request.scheme, "remote": request.remote})

    router = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key)),
                       RoutingTableHolder(table(deployment("blue", [upstream.port]))),
                       extra_routes=[web.post("/api/v1/batch/{endpoint}/jobs", jobs)])
    await router.start()
    try:
        await _extra_routes(router, upstream, certs)
    finally:
        await router.drain(1)
        await router.close()


async def _extra_routes(router, upstream, certs):
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    status, headers, _ = await read_answer(reader)
    assert status == 200 and "connection" not in headers  # kept alive
    # Then a route of aiohttp's on the same connection, with a chunked body.
    writer.write(b"POST /api/v1/batch/bep/jobs HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"3\r\ndef\r\n0\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert status == 200 and "connection" not in headers  # kept alive: no new TCP + TLS for the next call
    assert __import__("json").loads(body) == {"endpoint": "bep", "got": "abcdef", "scheme": "https",
                                              "remote": "127.0.0.1"}
    # The next requests on that connection — scoring, aiohttp's, scoring, pipelined — are
    # each answered whole and in order; a `Connection: close` one ends it.
    batch = b"POST /api/v1/batch/b2/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx"
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}" + batch + SCORE + b"Content-Length: 2\r\n\r\n{}")
    answers = [await read_answer(reader) for _ in range(3)]
    assert [(a[0], "connection" in a[1]) for a in answers] == [(200, False)] * 3
    assert b'"got": "x"' in answers[1][2] and len(upstream.seen) == 3
    writer.write(batch.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    status, headers, _ = await read_answer(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()
    # An unknown path under the handed-over prefix is the gateway's JSON 404.
    reader, writer = await connect(certs, router)
    writer.write(b"GET /api/v1/batch/nothing-here HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, _, body = await read_answer(reader)
    writer.close()
    assert status == 404 and b'"code":"NotFound"' in body
    assert len(upstream.seen) == 3


async def test_a_handed_over_connection_follows_each_kind_of_aiohttp_answer(make_router, upstream, certs):
    """Kept alive after a streamed (chunked) answer and after an answer sent before the
    body was read; closed after a HEAD and after aiohttp's own 400, which is HTTP/1.1 and
    JSON like every refusal of the gateway."""
    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"0\r\n\r\n", b"ab"):  # a chunk that looks like the end of a chunked body
            await response.write(part)
        await response.write_eof()
        return response

    async def early(request: web.Request) -> web.Response:
        return web.Response(text="early")  # the body is not read

    router = await make_router(app={"extra_routes": [web.get("/api/v1/batch/stream", stream),
                                                     web.post("/api/v1/batch/early", early),
                                                     web.get("/api/v1/batch/plain", early)]})
    reader, writer = await connect(certs, router)
    writer.write(b"GET /api/v1/batch/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert (status, headers.get("transfer-encoding"), body) == (200, "chunked", b"0\r\n\r\nab")
    writer.write(b"POST /api/v1/batch/early HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert (status, "connection" in headers, body) == (200, False, b"early")
    writer.write(b"body" + SCORE + b"Content-Length: 2\r\n\r\n{}")
    assert (await read_answer(reader))[0] == 200 and len(upstream.seen) == 1
    writer.write(b"HEAD /api/v1/batch/plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, _ = await read_answer(reader, head_only=True)
    assert status == 200 and headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()

    reader, writer = await connect(certs, router)
    writer.write(b"GET /api/v1/batch/stream HTTP/1.1\r\nHost: localhost\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()  # the whole answer: the connection ends with it
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"\r\nConnection: close" in head, head
    error = __import__("json").loads(body)
    assert error["code"] == "BadRequest" and error["message"].startswith("malformed request: ")
    assert f"x-request-id: {error['request_id']}".encode() in head


async def test_a_caller_that_leaves_mid_body_frees_everything(make_router, upstream, certs):
    router = await make_router()
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        while not upstream.in_flight:  # the streamed upload to the replica has begun
            await asyncio.sleep(0.01)
    writer.transport.abort()
    async with asyncio.timeout(10):
        while router.in_flight.total():
            await asyncio.sleep(0.02)
    reader, writer = await connect(certs, router)  # and the gateway serves the next caller
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    assert (await read_answer(reader))[0] == 200
    writer.close()


# -- TLS terminated by each connection (router/tls_termination.py) --------------------------


async def test_interleaved_connections_never_see_each_others_bytes(make_router, upstream, certs):
    # All connections read through the listener's two shared buffers: 40 callers whose
    # requests arrive in small pieces, interleaved, each get their own answer, and the
    # replica gets each request's own body.
    import random
    rng = random.Random(7)
    router = await make_router()
    conns = [await connect(certs, router) for _ in range(40)]
    payloads = []
    for i in range(40):
        body = b'{"caller": %d, "pad": "%s"}' % (i, b"p" * rng.randrange(0, 3000))
        payloads.append(SCORE + b"x-request-id: caller-%d\r\nContent-Length: %d\r\n\r\n%b" % (i, len(body), body))
    offsets = [0] * 40
    while any(offset < len(p) for offset, p in zip(offsets, payloads)):
        for i in rng.sample(range(40), 40):
            if offsets[i] < len(payloads[i]):
                piece = rng.randrange(1, 400)
                conns[i][1].write(payloads[i][offsets[i]:offsets[i] + piece])
                offsets[i] += piece
        await asyncio.sleep(0)
    answers = [await read_answer(reader) for reader, _ in conns]
    for _, writer in conns:
        writer.close()
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == \
        [(200, f"caller-{i}") for i in range(40)]
    bodies = {seen.header("x-request-id"): seen.body for seen in upstream.seen}
    assert bodies == {f"caller-{i}": payloads[i].split(b"\r\n\r\n", 1)[1] for i in range(40)}


async def test_many_pipelined_requests_each_in_its_own_record_are_all_answered(make_router, upstream, certs):
    # 40 requests written one by one (one TLS record each) before any answer: the gateway
    # stops decrypting at its pipelining bound, with the rest still inside the TLS
    # session and nothing more coming from the socket; answering resumes it.
    router = await make_router()
    reader, writer = await connect(certs, router)
    for i in range(40):
        writer.write(SCORE + b"x-request-id: req-%d\r\nContent-Length: 2\r\n\r\n{}" % i)
    answers = [await read_answer(reader) for _ in range(40)]
    writer.close()
    assert [(status, headers["x-request-id"]) for status, headers, _ in answers] == \
        [(200, f"req-{i}") for i in range(40)]


async def test_a_closed_connection_ends_with_close_notify(make_router, upstream, certs):
    # After `Connection: close` the caller reads a clean end of the TLS session, not a
    # truncation ("EOF occurred in violation of protocol").
    import socket
    router = await make_router()
    context = ssl.create_default_context(cafile=str(certs.ca_cert))

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
                tls.sendall(SCORE + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}")
                received = b""
                while chunk := tls.recv(65536):  # raises SSLEOFError on a truncation
                    received += chunk
                return received

    received = await asyncio.to_thread(exchange)
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b'{"ok": true}')


async def test_a_handshake_not_finished_in_time_is_dropped(make_router, upstream, certs):
    # The first head's deadline covers the handshake: a caller that opens TCP and never
    # says hello is dropped (counted), and others are served meanwhile.
    from router.listener import ConnectionLimits
    router = await make_router(limits=ConnectionLimits(header_timeout_s=0.5))
    silent = [await asyncio.open_connection("127.0.0.1", router.port) for _ in range(20)]
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    assert (await read_answer(reader))[0] == 200
    writer.close()
    async with asyncio.timeout(10):
        for silent_reader, silent_writer in silent:
            assert await silent_reader.read() == b""  # closed without a byte
            silent_writer.close()
    assert router.recorder.registry.get_sample_value(
        "scoregate_connection_refusals_total", {"reason": "tls_handshake_timeout"}) == 20


async def test_a_broken_record_ends_only_its_connection(make_router, upstream, certs):
    # Bytes that are not TLS (plain HTTP to the TLS port), or garbage after a handshake:
    # that connection is dropped, the gateway keeps serving.
    router = await make_router()
    plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", router.port)
    plain_writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    async with asyncio.timeout(10):
        assert await plain_reader.read() == b""
    plain_writer.close()
    import os
    import socket
    context = ssl.create_default_context(cafile=str(certs.ca_cert))

    def broken_after_one_request() -> bytes:
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(SCORE + b"Content-Length: 2\r\n\r\n{}")
                answer = tls.recv(65536)
                # An application-data record that fails to decrypt, under the TLS layer.
                with socket.socket(fileno=os.dup(tls.fileno())) as under:
                    under.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
                try:
                    after = tls.recv(65536)
                except (ssl.SSLError, ConnectionError):
                    after = b""
                return answer, after

    answer, after = await asyncio.to_thread(broken_after_one_request)
    assert answer.startswith(b"HTTP/1.1 200") and after == b""
    reader, writer = await connect(certs, router)
    writer.write(SCORE + b"Content-Length: 2\r\n\r\n{}")
    assert (await read_answer(reader))[0] == 200
    writer.close()
    assert len(upstream.seen) == 2


async def test_readyz_says_not_ready_from_the_start_of_a_drain(make_router, upstream, client):
    """A draining gateway answered /readyz 200 until the drain ended (it only turned 503 once
    the listener was gone), so health checks kept sending it new callers meanwhile."""
    upstream.respond = Script(delay_s=1.0)
    router = await make_router()
    admin = web.Application()
    admin.add_routes(router.admin_routes())
    runner = web.AppRunner(admin)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    readyz = f"http://127.0.0.1:{runner.addresses[0][1]}/readyz"
    try:
        async with client.get(readyz) as answer:
            assert answer.status == 200
        slow = asyncio.ensure_future(post(client, router))
        await until(lambda: upstream.in_flight == 1, 5, "the request to reach the replica")
        draining = asyncio.ensure_future(router.drain(5))
        await asyncio.sleep(0)
        async with client.get(readyz) as answer:
            assert answer.status == 503 and (await answer.json()) == {"ready": False}
        assert not slow.done()  # still being answered while the drain is said
        assert (await slow)[0] == 200
        await draining
    finally:
        await runner.cleanup()
