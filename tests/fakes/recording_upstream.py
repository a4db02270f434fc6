"""A real HTTP model replica on 127.0.0.1 that records what reached it.

Tests point a router at it to assert exactly which headers and bytes were forwarded.
Its answer is scripted per test through `respond` (status, headers, body, delay).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Seen:
    method: str
    path_qs: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


@dataclass
class Script:
    status: int = 200
    reason: str | None = None
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes = b'{"ok": true}'
    delay_s: float = 0.0
    chunks: int = 0  # >0: stream the body in that many chunks with no Content-Length
    # Faults: "reset" closes the connection without answering; "crash_mid_body" sends the
    # headers and half the body, then drops the connection; "hang" never answers.
    fault: str | None = None


class RecordingUpstream:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hanging = asyncio.Event()  # set() to release "hang" requests
        self.respond = Script()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> "RecordingUpstream":
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a request whose connection the gateway dropped stops here too.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self.hanging.set()
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, request.raw_path,
                              list(request.raw_headers and [(k.decode(), v.decode()) for k, v in request.raw_headers]),
                              body))
        script = self.respond
        if script.delay_s:
            await asyncio.sleep(script.delay_s)
        if script.fault == "hang":
            await self.hanging.wait()
        if script.fault == "reset":
            request.transport.abort()
            raise asyncio.CancelledError()
        if script.fault == "crash_mid_body":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream",
                                                               "Content-Length": str(len(script.body))})
            await response.prepare(request)
            await response.write(script.body[: len(script.body) // 2])
            await asyncio.sleep(0.05)
            request.transport.abort()
            raise asyncio.CancelledError()
        if script.chunks:
            response = web.StreamResponse(status=script.status, reason=script.reason, headers=script.headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            size = max(1, len(script.body) // script.chunks)
            for start in range(0, len(script.body), size):
                await response.write(script.body[start:start + size])
            await response.write_eof()
            return response
        return web.Response(status=script.status, reason=script.reason, headers=script.headers, body=script.body)
