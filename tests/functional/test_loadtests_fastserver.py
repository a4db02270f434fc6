"""The benchmark's fast server speaks enough HTTP/1.1 for the generator, wrk and nginx."""

import asyncio

from loadtests.fastserver import BODY, serve
from loadtests.generators.http import Target
from loadtests.runner import RunSpec, run_async


async def test_keep_alive_pipelining_and_bodies():
    server = await serve()
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"data": [1]}'
        post = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        writer.write(post + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + post[:20])  # 2.5 requests
        await writer.drain()
        answers = b""
        while answers.count(BODY) < 2:
            answers += await asyncio.wait_for(reader.read(4096), 5)
        assert answers.count(b"HTTP/1.1 200 OK") == 2
        writer.write(post[20:])  # the rest of the third, split across reads
        await writer.drain()
        third = await asyncio.wait_for(reader.read(4096), 5)
        assert third.startswith(b"HTTP/1.1 200 OK") and third.endswith(BODY)
        writer.write(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        last = await asyncio.wait_for(reader.read(), 5)  # read() to EOF: the server closed
        assert b"Connection: close" in last and last.endswith(BODY)
        writer.close()

        result = await run_async(RunSpec(Target(f"http://127.0.0.1:{port}/score", "POST",
                                                body=body), duration=0.5, mode="closed",
                                         connections=4))
        assert result.ok > 100 and result.failed == 0 and result.status == {"200": result.ok}
    finally:
        server.close()
        await server.wait_closed()
