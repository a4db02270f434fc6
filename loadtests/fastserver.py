"""A trivial, fast HTTP/1.1 server: the benchmark's "what does the generator reach" line.

It answers every request with the same small JSON body over keep-alive
connections, parsing no more of HTTP than a benchmark client sends
(Content-Length bodies, no chunked uploads), on a raw asyncio protocol with
uvloop.  Whatever rate the generator reaches against it is the ceiling of
the generator on its core, so figures near it measure the client, not the
target.  Run it with `python -m loadtests.fastserver [--port N]`; it prints
`PORT <n>` once listening and stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

BODY = b'{"result": [0.5]}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
MAX_HEAD = 64 * 1024


class FastHTTP(asyncio.Protocol):
    """One connection: split the byte stream into requests, answer each at once."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.transport.close()
                return self._flush(out)
            head = bytes(buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop > 0 else None].strip() or 0)
            total = end + 4 + length
            if len(buf) < total:
                return self._flush(out)
            del buf[:total]
            if b"\r\nconnection: close" in head:
                out.append(CLOSE_RESPONSE)
                self._flush(out)
                self.transport.close()
                return None
            out.append(RESPONSE)

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self.transport.write(b"".join(out))


async def serve(host: str = "127.0.0.1", port: int = 0) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(FastHTTP, host, port, backlog=1024, reuse_address=True)


async def _main(host: str, port: int) -> None:
    server = await serve(host, port)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.fastserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    from .generators.http import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_main(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
