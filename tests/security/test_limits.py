"""Limits, each answered early with its own status and without the gateway holding on:
request line (414), headers (431), body (413), slowloris (408, and normal clients keep
being served while 500 slow connections are open), connections, requests per connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time

import aiohttp

from router.listener import ConnectionLimits
from router.pipeline import BodySettings
from tests.fakes.recording_upstream import Script
from tests.functional.router_harness import AUTH, post
from tls import client_context

KEY = AUTH["Authorization"].encode()


def status_and_body(received: bytes) -> tuple[int, dict]:
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_request_line_too_long_is_414(make_router, upstream, raw):
    router = await make_router(limits=ConnectionLimits(max_line_size=1024))
    received, closed = await raw(router).exchange(
        b"GET /api/v1/endpoint/ep/" + b"a" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, body = status_and_body(received)
    assert status == 414 and body["code"] == "UriTooLong" and closed
    assert upstream.seen == []


async def test_header_too_large_or_too_many_is_431(make_router, upstream, raw):
    router = await make_router(limits=ConnectionLimits(max_field_size=512, max_headers=20))
    big = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"b" * 1000 + b"\r\n\r\n"
    many = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(40)) + b"\r\n"
    for payload in (big, many):
        received, closed = await raw(router).exchange(payload)
        status, body = status_and_body(received)
        assert status == 431 and body["code"] == "RequestHeaderFieldsTooLarge" and closed
    assert upstream.seen == []


async def test_body_too_large_is_413_declared_or_chunked(make_router, upstream, raw):
    router = await make_router(body=BodySettings(max_body_bytes=4096, buffer_max_bytes=1024))
    declared = (b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY +
                b"\r\nContent-Length: 100000\r\n\r\n")
    assert status_and_body(await raw(router).response(declared, timeout_s=3))[0] == 413
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    chunked = (b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert status_and_body(await raw(router).response(chunked, timeout_s=3))[0] == 413
    assert all(len(seen.body) <= 4096 for seen in upstream.seen)


async def test_slowloris_gets_408_and_normal_clients_are_served(make_router, upstream, raw, certs):
    router = await make_router(limits=ConnectionLimits(header_timeout_s=1.5))
    client = raw(router)
    slow = []
    for _ in range(500):  # each sends a few bytes of its headers, then stalls
        reader, writer = await client.open()
        writer.write(b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHo")
        slow.append((reader, writer))
    connector = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert))
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        for _ in range(10):
            assert (await post(session, router))[0] == 200
        assert time.monotonic() - started < 5
    answers = []
    async with asyncio.timeout(10):
        for reader, writer in slow:
            answers.append(await reader.read(1024))
            writer.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_connection_refusals_total", {"reason": "header_timeout"}) == 500


async def test_connections_over_the_limit_are_closed_at_once(make_router, upstream, raw):
    router = await make_router(limits=ConnectionLimits(max_connections=5, header_timeout_s=30))
    client = raw(router)
    held = [await client.open() for _ in range(5)]
    try:
        try:
            reader, writer = await client.open()
            async with asyncio.timeout(5):
                extra = await reader.read(1024)
            writer.close()
        except (ConnectionError, ssl.SSLError):
            extra = b""
        assert extra == b""  # closed without an answer
    finally:
        for _, writer in held:
            writer.close()
    async with asyncio.timeout(5):  # once the router has seen the five go, a connection is served again
        while True:
            try:
                received, _ = await client.exchange(b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n"
                                                    b"Connection: close\r\n\r\n")
            except (ConnectionError, ssl.SSLError):  # refused: the closes not seen yet
                received = b""
            if received.startswith(b"HTTP/1.1 404"):
                break
            await asyncio.sleep(0.02)
    assert router.recorder.registry.get_sample_value(
        "scoregate_connection_refusals_total", {"reason": "max_connections"}) >= 1


async def test_requests_per_connection_are_bounded(make_router, upstream, certs):
    router = await make_router(limits=ConnectionLimits(max_requests_per_connection=3))
    connector = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert), limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        closes = []
        for _ in range(6):
            async with session.post(f"https://127.0.0.1:{router.port}/api/v1/endpoint/ep/score", data=b"{}",
                                    headers=AUTH) as r:
                await r.read()
                closes.append(r.headers.get("Connection", "").lower() == "close")
    assert closes == [False, False, True, False, False, True]


async def test_trailers_count_against_the_head_limit(make_router, upstream, raw):
    """A chunked body's trailer section is a second head: without a limit of its own, each
    connection could make the gateway hold 100 headers of 8 KiB (800 KiB) past the 64 KiB
    a head may have."""
    router = await make_router()
    trailers = b"".join(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 8000) for i in range(20))
    received, closed = await raw(router).exchange(
        b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n" + trailers + b"\r\n")
    status, body = status_and_body(received)
    assert status == 431 and body["code"] == "RequestHeaderFieldsTooLarge" and closed
    # Small trailers are still accepted (and not forwarded: the gateway frames the body).
    status, _ = status_and_body(await raw(router).response(
        b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Checksum: 1\r\n\r\n"))
    assert status == 200
    assert upstream.seen[-1].header("X-Checksum") is None


async def test_a_caller_that_reads_no_answers_gets_no_more(make_router, upstream, raw):
    """Pipelined requests from a caller that never reads: the gateway stops answering (and
    forwarding) once its answers back up, and drops the connection after the keep-alive
    timeout, instead of holding every answer in memory for as long as the caller likes."""
    upstream.respond = Script(body=b"x" * 256 * 1024)
    router = await make_router(keepalive_timeout_s=1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", router.port))
    reader, writer = await asyncio.open_connection(sock=sock, ssl=raw(router)._context, server_hostname="localhost")
    request = (b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY
               + b"\r\nContent-Length: 2\r\n\r\n{}")
    writer.write(request * 200)  # 50 MiB of answers, none of them read
    value = router.recorder.registry.get_sample_value
    async with asyncio.timeout(10):
        while value("scoregate_connection_refusals_total", {"reason": "answers_unread"}) is None:
            await asyncio.sleep(0.05)
    assert len(upstream.seen) < 50
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(10):
            while chunk := await reader.read(1 << 20):
                received += chunk
    writer.close()
    assert 0 < received.count(b"HTTP/1.1 200") < 50


async def test_a_caller_that_reads_slowly_gets_its_whole_answer(make_router, upstream, raw):
    """The other side of the rule above: a caller that does read, only slowly, is not cut
    off at the keep-alive timeout while its answer is still going out (nginx's
    send_timeout: no progress for that long, not the whole answer within it)."""
    upstream.respond = Script(body=b"x" * 256 * 1024)
    router = await make_router(keepalive_timeout_s=2.0)
    # A small kernel send buffer for the connections it accepts (inherited from the
    # listening socket), as on a real network: on loopback the kernel would take the whole
    # answer at once and nothing would wait in the gateway.
    for listening in router._listener._server.sockets:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    context = raw(router)._context

    def read_slowly() -> int:
        """A blocking client with a small receive buffer: what it has not read stays with
        the gateway. At most 16 KiB every 0.025 s (with these buffers a read returns a few
        KiB, and the loopback's small TCP windows pace it too): ~4.5 s for the answer here,
        well past the keep-alive timeout (2 s), sent in small steps as the caller reads."""
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as plain:
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            with context.wrap_socket(plain, server_hostname="localhost") as tls:
                tls.sendall(b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: "
                            + KEY + b"\r\nContent-Length: 2\r\n\r\n{}")
                received = b""
                while len(received.partition(b"\r\n\r\n")[2]) < 256 * 1024:
                    chunk = tls.recv(16384)
                    if not chunk:
                        break  # cut off
                    received += chunk
                    time.sleep(0.025)
                return len(received.partition(b"\r\n\r\n")[2])

    assert await asyncio.to_thread(read_slowly) == 256 * 1024
    assert value_of(router, "answers_unread") is None


def value_of(router, reason: str):
    return router.recorder.registry.get_sample_value("scoregate_connection_refusals_total", {"reason": reason})
