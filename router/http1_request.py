"""A request on the scoring port as handlers see it, and its body as it arrives.

router.http1 parses a request into a Request and feeds its RequestBody; the handler
(router.handlers, router.pipeline, router.upstream.forward) reads the body and answers
through the Request, which writes on its connection (`conn`: router.http1.HttpConnection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .http1 import HttpConnection

BODY_HIGH_WATER = 256 * 1024  # stop reading from the caller while this much body waits


class RequestBody:
    """A request's body as it arrives, for one consumer: read() it whole, or iterate
    chunks(). Reading from the caller pauses while BODY_HIGH_WATER bytes wait. The first
    wait for a body the caller holds back behind `Expect: 100-continue` sends
    `100 Continue` — so a request refused before its body is read never uploads it."""

    __slots__ = ("_conn", "_chunks", "_buffered", "received", "done", "_error", "_waiter", "_expect_continue",
                 "_discard")

    def __init__(self, conn: HttpConnection, expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.received = 0
        self.done = False  # every byte of the body is in
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._expect_continue = expect_continue
        self._discard = False

    # -- fed by the connection
    def feed(self, data: bytes) -> None:
        if self._discard:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.received += len(data)
        if self._buffered > BODY_HIGH_WATER:
            self._conn.pause_reading_for_body()
        if self._waiter is not None:  # usually nobody waits yet: the body came with the head
            self._wake()

    def feed_eof(self) -> None:
        self.done = True
        if self._waiter is not None:
            self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.done and self._error is None:
            self._error = error
        self._wake()

    def discard(self) -> None:
        """Nobody reads this body any more: drop what came and what comes."""
        self._discard = True
        self._chunks.clear()
        self._buffered = 0
        self._conn.resume_reading_for_body()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the handler
    @property
    def buffered(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        """Every byte that arrived and was not taken yet."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        self._conn.resume_reading_for_body()
        return data

    async def read(self) -> bytes:
        while not self.done:
            await self._wait()
        return self.take()

    async def chunks(self):
        while True:
            if self._chunks:
                yield self.take()
            elif self.done:
                return
            else:
                await self._wait()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        if self._expect_continue:
            self._expect_continue = False
            self._conn.send_continue()
        self._waiter = self._conn.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error


class Request:
    """One parsed request and the way to answer it. Header names are looked up in
    lower case bytes; values come back as text (UTF-8, undecodable bytes kept as
    surrogates, so they go out again byte for byte)."""

    __slots__ = ("conn", "method", "target", "path", "query", "version", "raw_headers", "index",
                 "content_length", "chunked", "has_body", "keep_alive", "head_only", "body", "responded",
                 "_chunked_out", "_streaming", "handed_over", "remote", "scheme", "forward_lines", "request_id",
                 "refusal")

    def __init__(self, conn: HttpConnection, method: str, target: bytes, version: str,
                 raw_headers: list[tuple[bytes, bytes]], index: dict[bytes, bytes],
                 content_length: int | None, chunked: bool, keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        path, _, query = target.partition(b"?")
        # find(), not `b"#" in target`: bytes.__contains__ first tries the operand as an
        # int and builds (then drops) a TypeError, ~1.6k instructions on every request.
        if target.find(b"#") >= 0:
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
        self.path = path.decode("utf-8", "surrogateescape")  # raw: still percent-encoded
        self.query = query.decode("utf-8", "surrogateescape")
        self.version = version
        self.raw_headers = raw_headers
        self.index = index  # lower-case name -> its first raw value (bytes)
        self.content_length = content_length
        self.chunked = chunked
        self.has_body = chunked or bool(content_length)
        self.remote: str | None = conn.remote  # the caller's address
        self.scheme: str = conn.scheme
        self.keep_alive = keep_alive
        self.head_only = method == "HEAD"
        self.body = RequestBody(conn, expect_continue)
        self.responded = False
        self._chunked_out = False
        self._streaming = False
        self.handed_over = False
        # The headers a model may see, as "Name: value\r\n" lines (router.http1 picks them
        # while parsing); None: router.upstream.headers picks them from raw_headers.
        self.forward_lines: list[bytes] | None = None
        self.request_id: str | None = None  # the handler's id for it, once named
        # Set by the connection when the body turned out malformed while the handler ran:
        # the connection answers it (router.http1.Refusal), the handler only records it.
        self.refusal = None

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lower case), or None."""
        value = self.index.get(name)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    def header_dict(self) -> dict[str, str]:
        return {n.decode("latin-1"): v.decode("utf-8", "surrogateescape") for n, v in self.raw_headers}

    # -- answering: whole, or streamed
    def respond(self, status: int, headers: bytes, body: bytes = b"", *, content_length: int | None = None) -> None:
        """Send the whole answer. `headers`: "Name: value\\r\\n" lines, without framing.
        `content_length` overrides len(body) (an answer to HEAD carries no body)."""
        self.responded = True
        length = len(body) if content_length is None else content_length
        head = self.conn.answer_head(self, status, headers, b"Content-Length: %d\r\n" % length)
        self.conn.write(head + body if body and not self.head_only else head)

    def start(self, status: int, headers: bytes, length: int | None) -> None:
        """Send the head of a streamed answer; then write() the body and end()."""
        self.responded = True
        self._streaming = True
        if length is not None:
            framing = b"Content-Length: %d\r\n" % length
        elif self.version == "1.1":
            framing = b"Transfer-Encoding: chunked\r\n"
            self._chunked_out = not self.head_only
        else:
            framing = b""  # HTTP/1.0: the end of the connection ends the body
            self.keep_alive = False
        self.conn.write(self.conn.answer_head(self, status, headers, framing))

    async def write(self, data: bytes) -> None:
        if not data or self.head_only:
            return
        if self._chunked_out:
            self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)
        await self.conn.drain()

    def end(self) -> None:
        if self._chunked_out:
            self.conn.write(b"0\r\n\r\n")
        self._streaming = False

    def abort(self) -> None:
        """Cut the connection: the caller sees a truncated answer, never a short one."""
        self.conn.abort()
