"""One keep-alive HTTP/1.1 connection to a replica, on a bare asyncio protocol.

Why not aiohttp's client here: on the hop to a replica it was the largest single cost
per request (docs/performance.md), and after a failure it cannot say whether the request
could have reached the model. This protocol counts what it received and sees how the
connection ended (a clean close, or a reset), which is what the safe-retry rule of
router.upstream.forward needs. Responses are parsed by httptools (llhttp).

One exchange at a time: `send()` the request, await `head()`, then either `read_all()`
or `next_chunk()` until None, then the pool takes the connection back if `reusable`.
Every buffer is bounded: the response head (size and header count) here, the body by
the forwarder's limit, and reading pauses while the consumer is behind.
"""

from __future__ import annotations

import asyncio

import httptools

from .headers import DROP_DOWNSTREAM_RAW

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
PAUSE_READING_BYTES = 256 * 1024


class ConnectionClosed(Exception):
    """The connection ended before the answer did.

    `received` counts the bytes of this exchange's answer that arrived (0: none);
    `reset` is True when the peer reset the connection instead of closing it: its
    application had unread bytes of our request, so it cannot have answered it."""

    def __init__(self, received: int, reset: bool) -> None:
        super().__init__("reset by the replica" if reset else "closed by the replica")
        self.received = received
        self.reset = reset


class BadResponse(Exception):
    """The replica's answer is not valid HTTP/1.1 (or over a limit of this module)."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("key", "transport", "closed", "uses", "idle_since", "_parser", "_loop",
                 "_active", "_head_only", "_status", "_reason", "_headers", "downstream_lines", "_length_value", "_head_bytes",
                 "_length", "_chunked", "_close_delimited", "_head_done", "_complete",
                 "_keep_alive", "_received", "_body", "_buffered", "_error", "_waiter",
                 "_reading_paused", "_write_paused", "_drain_waiter")

    def __init__(self, key: tuple) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.uses = 0  # exchanges started on this connection; > 1 means it was reused
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._active = False
        self._waiter: asyncio.Future | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._reset_exchange(False)

    def _reset_exchange(self, head_only: bool) -> None:
        self._head_only = head_only
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        # The answer's headers a caller may see, as "Name: value\r\n" lines picked while
        # parsing (router.upstream.headers' rule), for the forwarder to use up; None when a
        # `Connection` header names more to drop (then apply downstream_header_lines()).
        self.downstream_lines: list[bytes] | None = []
        self._length_value: bytes | None = None
        self._head_bytes = 0
        self._length: int | None = None
        self._chunked = False
        self._close_delimited = False
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._received = 0
        self._body: list[bytes] = []
        self._buffered = 0
        self._error: BaseException | None = None
        self._reading_paused = False

    # --- what the forwarder calls -------------------------------------------------

    def usable(self) -> bool:
        """Still open and quiet: safe to start a new exchange on."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def reusable(self) -> bool:
        """The last answer is complete and the replica keeps the connection open."""
        return self._complete and self._keep_alive and self._error is None and self.usable()

    @property
    def received(self) -> int:
        return self._received

    def send(self, head: bytes, body: bytes | None = None, *, head_only: bool = False) -> None:
        """Start an exchange: the request head (and a body held in memory) in one write."""
        if self._active:
            raise RuntimeError("an exchange is already running on this connection")
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():  # not `usable`
            raise ConnectionClosed(0, False)
        self._reset_exchange(head_only)
        self._active = True
        self.uses += 1
        transport.write(head + body if body else head)

    def write(self, data: bytes) -> None:
        if self.closed:
            raise self._error or ConnectionClosed(self._received, False)
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        if self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.closed and not self._complete:
            raise self._error or ConnectionClosed(self._received, False)

    async def head(self) -> tuple[int, bytes, list[tuple[bytes, bytes]], int | None]:
        """(status, reason, raw headers, Content-Length or None) of the final answer."""
        while not self._head_done:
            await self._next_event()
        return self._status, self._reason, self._headers, self._length

    async def read_all(self) -> bytes:
        while not self._complete:
            await self._next_event()
        body = b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        return body

    async def next_chunk(self) -> bytes | None:
        """The body bytes that arrived since the last call; None at the end of the answer."""
        while not self._body:
            if self._complete:
                return None
            await self._next_event()
        chunk = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> bool:
        """End the exchange; True when the connection may go back to the pool."""
        if self.reusable():
            self._active = False
            self._body.clear()
            return True
        self._active = False
        self.abort()
        return False

    def abort(self) -> None:
        """Close at once; a running exchange's waiter gets ConnectionClosed."""
        self.closed = True
        if self._active:
            self._fail(ConnectionClosed(self._received, False))
        if self.transport is not None:
            self.transport.abort()

    def _next_event(self) -> asyncio.Future:
        """A future the next callback of the exchange resolves (a plain function: the
        awaiting coroutine awaits the future itself, one coroutine level less); raises
        the exchange's error instead when there is one."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # resolved once: the callbacks after it skip the call
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._active or self._complete:
            # Bytes nobody asked for: the stream is out of step; never reuse it.
            self.closed = True
            self.transport.abort()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the replica switched protocols"))
            self.abort()
        except httptools.HttpParserError as exc:
            # An exception raised in a callback below comes back as the context.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadResponse) else BadResponse(f"invalid HTTP answer: {exc}"))
            self.abort()

    def eof_received(self) -> bool:
        self.closed = True
        if self._active and self._head_done and self._close_delimited and not self._complete:
            self._complete = True  # an answer without length ends with the connection
            self._wake()
        elif self._active:
            self._fail(ConnectionClosed(self._received, False))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self._active:
            self._fail(ConnectionClosed(self._received, isinstance(exc, ConnectionResetError)))
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- httptools callbacks ------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        if self._complete:
            raise BadResponse("bytes after the end of the answer")
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES or len(self._headers) >= MAX_HEADERS:
            raise BadResponse(f"the answer's head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")
        self._headers.append((name, value))
        lower = name.lower()
        if lower in DROP_DOWNSTREAM_RAW:
            if lower == b"content-length":
                self._length_value = value
            elif lower == b"transfer-encoding":
                self._chunked = True
            elif lower == b"connection":
                self.downstream_lines = None
        elif self.downstream_lines is not None:
            self.downstream_lines.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # interim answer (e.g. 100 Continue): wait for the final one
        self._status = status
        if self._length_value is not None:
            self._length = int(self._length_value)
            if self._length > (1 << 62):
                raise BadResponse("the answer's Content-Length is out of range")
        self._close_delimited = (self._length is None and not self._chunked
                                 and status not in (204, 304) and not self._head_only)
        self._head_done = True
        if self._head_only or status in (204, 304):
            self._finish_message()
        self._wake()

    def on_body(self, data: bytes) -> None:
        if not self._head_done or self._complete:
            return
        self._body.append(data)
        self._buffered += len(data)
        if self._buffered > PAUSE_READING_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None:  # usually the head's waiter was woken already
            self._wake()

    def on_message_complete(self) -> None:
        if not self._head_done:
            # The end of an interim answer: the final one follows on the same stream.
            self._reason = b""
            self._headers = []
            self.downstream_lines = []
            self._length_value = None
            self._chunked = False
            self._head_bytes = 0
            return
        if not self._complete:
            self._finish_message()
            if self._waiter is not None:
                self._wake()

    def _finish_message(self) -> None:
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive() and not self._head_only
