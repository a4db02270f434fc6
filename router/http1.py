"""The scoring port's HTTP/1.1 server: one asyncio protocol per caller connection.

Why our own and not aiohttp's server: once the upstream hop ran on our own client,
aiohttp's server side (its request and response objects, router, writer and a task
loop per connection) was the largest block of gateway CPU per request
(docs/performance.md). This module does only what the scoring port needs:

    bytes (read into the listener's shared buffer; with TLS, decrypted by the
    connection's own router.tls_termination session) → httptools (llhttp, strict)
    → Request (router.http1_request: method, raw target, raw headers, RequestBody)
    → the handler (router.handlers) in a task of its own → the answer, written whole
    by Request.respond() or streamed by start() / write() / end()
    → the next request on the connection, or the keep-alive wait.

Requests on one connection are answered one at a time and in order (pipelined ones
wait, their bodies buffered up to a bound). Before a handler sees anything, a request
is refused with a JSON body `{code, message, request_id}` and the connection closed
(router.listener counts each refusal): 400 for everything llhttp refuses (both
Content-Length and Transfer-Encoding, duplicate or signed lengths, obfuscated transfer
codings, bad chunks, bare LF, obsolete folding, NUL/CR/LF in values, non-token
methods), for a Transfer-Encoding other than `chunked` or in an HTTP/1.0 request, and
for protocol upgrades; 414 a request target over `max_line_size`; 431 a header over
`max_field_size`, more than `max_headers`, or a head (or a chunked body's trailers,
which are dropped) over `MAX_HEAD_BYTES`; 417 an
`Expect` other than `100-continue`; 408 when the first request's head is not in within
`header_timeout_s` (slowloris). A caller that goes away cancels its handler's task, so
the upstream call stops and the replica slot is freed at once.

Paths the gateway serves with aiohttp (the control plane's `extra_routes`, e.g. batch
jobs) are handed to an aiohttp connection handler: it gets the request re-serialized
(the same method, target, headers and body) and answers it on this transport. The
connection stays the caller's (keep-alive) when the caller and aiohttp's answer allow it:
the answer is read as it is written (router.handover), and once it is whole and the request's
body read, aiohttp lets go of the connection (as if its caller had left) and the next
request on it is parsed here, as any other. Otherwise (`Connection: close` either way,
a HEAD, a limit or a drain) the connection ends with aiohttp's answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus

import httptools
import orjson

from .context import request_id_from
from .handover import CONTINUE, HandedOverTransport
from .http1_request import Request
from .tls_termination import TlsSession, TlsTransport
from .upstream.headers import DROP_UPSTREAM_RAW

log = logging.getLogger("scoregate.router.http")

MAX_HEAD_BYTES = 64 * 1024  # request line + headers, whatever the per-field limits allow
MAX_PIPELINED = 16  # requests parsed ahead of the one being answered
LINGER_S = 2.0  # after an early answer, read (and drop) the rest of the body this long

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_TASK_NAME = "scoregate-request"  # every request's task (asyncio debug output, task dumps)
_DROP_ON_HANDOVER = frozenset((b"connection", b"keep-alive"))


class Refusal(Exception):
    """A request refused before any handler saw it (or, for a body found malformed while
    its handler ran, instead of that handler's answer)."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason or f"http_{status}"  # the refusal's metric label
        self.request_id: str | None = None  # the id its handler gave the request, if one ran


_date_cache: list = [0, b""]


def _date_line() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def json_error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"code": code, "message": message, "request_id": request_id})


class ReadBuffer:
    """The read buffers all connections of a listener share: what the socket gives
    (ciphertext with TLS) and, with TLS, the plaintext decrypted from it.

    Why: one buffer per listener instead of one per read or per connection (the event
    loop's TLS layer made a 256 KiB bytes object for every read, and keeps a 256 KiB
    buffer per connection). Sharing is safe because what is read is parsed at once, in
    buffer_updated(), and httptools hands its callbacks copies, never views; and reads
    are only ever started by the event loop, never from inside a parse."""

    __slots__ = ("view", "plain")

    SIZE = 64 * 1024

    def __init__(self) -> None:
        self.view = memoryview(bytearray(self.SIZE))
        self.plain = memoryview(bytearray(self.SIZE))


class HttpConnection(asyncio.BufferedProtocol):
    """One caller connection. `owner` (router.listener.Listener) provides the limits,
    the handler, refusal counting, the shared read buffer and the aiohttp hand-over."""

    __slots__ = ("_owner", "_limits", "loop", "transport", "_reads", "_tls", "remote", "scheme", "_parser",
                 "_url", "_headers", "_index", "_forward", "_head_bytes", "_parsing", "_active", "_queue", "_task",
                 "_heads", "_served", "_deadline", "_timer", "_stopped", "_body_paused", "_queue_paused",
                 "_write_paused", "_drain_waiter", "_delegate", "_idle_waiter", "_lingering", "_in_message",
                 "_held", "_unread", "_handover")

    def __init__(self, owner) -> None:
        self._owner = owner
        self._limits = owner.limits
        self.loop = owner.loop  # serving this connection; asyncio.get_running_loop() makes a getpid()
        self._reads: ReadBuffer = owner.read_buffer
        self._tls: TlsSession | None = None  # with TLS (router.tls_termination)
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self.scheme = "http"
        # An idle keep-alive connection holds no parser (nor a queue): made when a request
        # comes (see _finish), the two were ~1.6 KB of each of 10,000 idle connections.
        self._parser: httptools.HttpRequestParser | None = None
        self._in_message = False  # the parser has seen the start of a request not complete yet
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}
        # The headers that may go to a model, as lines, picked while parsing (None: a
        # `Connection` header names more to drop; router.upstream.headers then decides).
        self._forward: list[bytes] | None = []
        self._head_bytes = 0
        self._parsing: Request | None = None  # the request whose body is arriving
        self._active: Request | None = None  # the request being answered
        self._queue: deque | None = None  # parsed requests (or a Refusal) waiting their turn
        self._task: asyncio.Task | None = None
        self._heads = 0  # request heads parsed
        self._served = 0  # requests started
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False  # no more requests are read from this connection
        self._body_paused = False
        self._queue_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._delegate = None  # the aiohttp protocol this connection was handed to
        self._handover: HandedOverTransport | None = None  # the transport it was given
        self._idle_waiter: asyncio.Future | None = None
        self._lingering = False
        self._held = False  # the next request waits until the caller reads its answers
        self._unread = 0  # while held: bytes of answers not sent yet, at the last look

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) else peer
        context = self._owner.ssl_context
        if context is not None:
            self._tls = TlsSession(context, transport.write, self._owner.handshakes)
            self.scheme = "https"
        # TCP_NODELAY: uvloop and asyncio both set it on every accepted TCP socket.
        self._owner.connections.add(self)
        self._set_deadline(self._limits.header_timeout_s)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reads.view

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` arrived in the shared read buffer (0: go on with what TLS still holds)."""
        tls = self._tls
        if tls is None:
            self.data_received(self._reads.view[:nbytes])
            return
        try:  # decrypted into the other shared buffer and parsed at once
            still_open = tls.receive(self._reads.view[:nbytes], self._reads.plain, self.data_received)
        except ssl.SSLError as exc:
            # A failed handshake (counted by tls.metrics) or a broken record: nothing to answer.
            log.debug("TLS with %s failed: %s", self.remote, exc)
            self.abort()
            return
        if not still_open:  # the caller's close_notify: as the end of its stream
            self._stopped = True
            self.close()

    def _pump_tls(self) -> None:
        """After a pause: what the TLS session still holds."""
        tls = self._tls
        if tls is not None and not tls.paused and self.transport is not None and not self.transport.is_closing():
            self.buffer_updated(0)

    def data_received(self, data) -> None:
        """Parse what arrived (a view of the read buffer: nothing may keep it)."""
        if self._stopped and not (self._lingering or self._delegate is not None):
            return  # refused, or past the last request: nothing more is read
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, Refusal) else Refusal(400, "BadRequest", f"malformed request: {exc}"))
        except httptools.HttpParserUpgrade:
            self._refuse(Refusal(400, "BadRequest", "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            if not self._stopped or self._handed_over_body():
                self._refuse(Refusal(400, "BadRequest", f"malformed request: {exc}"))
        else:
            if self._parsing is None and (self._head_bytes or self._url):
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(Refusal(431, "RequestHeaderFieldsTooLarge",
                                         f"malformed request: the request head is over {MAX_HEAD_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        if self._delegate is not None:
            return self._delegate.eof_received()
        return None  # close the connection; a running handler is cancelled by connection_lost

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stopped = True
        self._owner.connections.discard(self)
        if self._tls is not None:
            self._tls.lost()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        error = ConnectionResetError("the caller closed the connection")
        for request in (self._parsing, self._active, *(self._queue or ())):
            if isinstance(request, Request):
                request.body.fail(error)
        self._queue = None
        # The parser holds this protocol (its callbacks): let go of it, or a connection that
        # ends mid-head (a slowloris caller's 408) stays in a cycle until a full collection.
        self._parser = None
        self._parsing = None
        if self._task is not None:
            self._task.cancel()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)  # drain() sees the connection is gone
        if self._delegate is not None:
            self._delegate.connection_lost(exc)
        self._wake_idle()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._delegate is not None:
            self._delegate.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._held:
            self._held = False
            self._resume_reading()
            self._next()
        if self._delegate is not None:
            self._delegate.resume_writing()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_line_size:
            raise Refusal(414, "UriTooLong", f"malformed request: the request target is over "
                                             f"{self._limits.max_line_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._url:  # after the head (its request line came first): a trailer of a chunked body
            self._on_trailer(name, value)
            return
        limits = self._limits
        if len(name) > limits.max_field_size or len(value) > limits.max_field_size:
            raise Refusal(431, "RequestHeaderFieldsTooLarge",
                          f"malformed request: a header is over {limits.max_field_size} bytes")
        if len(self._headers) >= limits.max_headers:
            raise Refusal(431, "RequestHeaderFieldsTooLarge",
                          f"malformed request: too many headers (more than {limits.max_headers})")
        self._headers.append((name, value))
        lower = name.lower()
        if lower not in self._index:
            self._index[lower] = value
        elif lower == b"transfer-encoding" or lower == b"host":
            raise Refusal(400, "BadRequest", f"malformed request: more than one {name.decode()} header")
        if lower not in DROP_UPSTREAM_RAW:
            if self._forward is not None:
                self._forward.append(b"%s: %s\r\n" % (name, value))
        elif lower == b"connection":
            self._forward = None

    def _on_trailer(self, name: bytes, value: bytes) -> None:
        """Trailers are read and dropped (never forwarded: the gateway frames the body it
        sends), but count against the head's limit, or a trailer section would be a head
        without one. _head_bytes counts them until on_message_complete."""
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise Refusal(431, "RequestHeaderFieldsTooLarge",
                          f"malformed request: the trailers are over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        if parser.should_upgrade():
            raise Refusal(400, "BadRequest", "protocol upgrades are not supported")
        index = self._index
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":  # llhttp reads "HTTP/2.0" or "HTTP/0.9" as it would 1.1
                raise Refusal(505, "HttpVersionNotSupported",
                              f"HTTP/{version} is not supported here: send HTTP/1.1 (or 1.0)")
        elif b"host" not in index:
            raise Refusal(400, "BadRequest", "malformed request: an HTTP/1.1 request needs a Host header")
        chunked = False
        te = index.get(b"transfer-encoding")
        if te is not None:
            if version != "1.1":
                raise Refusal(400, "BadRequest", "Transfer-Encoding is not allowed in HTTP/1.0 requests")
            if te.strip().lower() != b"chunked":
                raise Refusal(400, "BadRequest", "malformed request: the only transfer coding accepted is chunked")
            chunked = True
        length = index.get(b"content-length")
        expect = index.get(b"expect")
        if expect is not None and expect.strip().lower() != b"100-continue":
            raise Refusal(417, "ExpectationFailed", "the only expectation supported is 100-continue")
        method = parser.get_method()
        request = Request(self, _METHODS.get(method) or method.decode("ascii"), self._url, version,
                          self._headers, index, int(length) if length is not None else None, chunked,
                          parser.should_keep_alive(), expect is not None and version == "1.1")
        request.forward_lines = self._forward
        self._url = b""
        self._headers = []
        self._index = {}
        self._forward = []
        self._head_bytes = 0
        self._heads += 1
        if self._stopped:
            self._parsing = None  # after the last request (handed over, or lingering): ignored
            return
        self._parsing = request
        if self._owner.hands_over(request.path):
            request.handed_over = True
        if self._active is None and not self._queue:
            self._start(request)
        else:
            self._enqueue(request)
            if len(self._queue) >= MAX_PIPELINED and not self._queue_paused:
                self._queue_paused = True
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        if request.handed_over and request is self._active:
            self._deadline = self.loop.time() + self._owner.keepalive_timeout_s  # (the timer re-arms itself)
            self._delegate.data_received(b"%x\r\n%b\r\n" % (len(body), body) if request.chunked else body)
        elif self._delegate is None or not self._stopped:  # (a request after a kept-alive hand-over)
            request.body.feed(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._head_bytes = 0  # the trailers', if any were counted
        request = self._parsing
        self._parsing = None
        if request is None:
            return
        if request.handed_over and request is self._active:
            self._deadline = None  # the body is in: aiohttp's answer takes the time it takes
            if request.chunked:
                self._delegate.data_received(b"0\r\n\r\n")
            if self._handover is not None and self._handover.answered:
                self.loop.call_soon(self._take_back, self._handover)
        else:
            request.body.feed_eof()
        if self._lingering:
            self.close()  # the early answer is out and the body is in: done
        if not request.keep_alive:
            self._stopped = True  # nothing after this request is read (llhttp would refuse it)

    # -- one request after the other -------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._active = request
        self._deadline = None  # no head or idle deadline while a request is answered
        self._served += 1
        if self._served >= self._limits.max_requests_per_connection or self._owner.draining:
            request.keep_alive = False
        if request.handed_over:
            self._hand_over(request)
            return
        # A Task made here with its name: loop.create_task() would first format a
        # "Task-N" name for it (Python 3.11), ~1.3k instructions on every request.
        self._task = asyncio.Task(self._serve(request), loop=self.loop, name=_TASK_NAME)

    async def _serve(self, request: Request) -> None:
        try:
            # The handler answers at once (None) or returns what answers: an awaitable.
            answering = self._owner.handler(request)
            if answering is not None:
                await answering
        except Exception:
            log.exception("the handler failed on %s %s", request.method, request.path)
            if not request.responded and not self._stopped:
                request.keep_alive = False
                self._send_json(request, 500, "InternalError", "the gateway failed to handle the request")
        finally:
            self._finish(request)

    def _finish(self, request: Request) -> None:
        if self._active is not request:
            return  # refused while its handler ran (see _refuse)
        self._task = None
        self._active = None
        if self.transport is None or self.transport.is_closing():
            self._wake_idle()
            return
        if not request.responded or request._streaming:
            self.abort()  # cancelled half-way (shutdown): a partial answer must not look whole
            return
        if not request.keep_alive:
            if request.body.done:
                self.close()
            else:  # answered before its body arrived: read and drop the rest for a while
                self._stopped = self._lingering = True
                request.body.discard()
                self.loop.call_later(LINGER_S, self.close)
            self._wake_idle()
            return
        if self._write_paused:
            # The caller does not read its answers: answer (and read) nothing more until it
            # does (resume_writing), or pipelined answers would pile up here without bound.
            self._held = True
            self._unread = self.transport.get_write_buffer_size()
            self.pause_reading()
            self._set_deadline(self._owner.keepalive_timeout_s)
            self._wake_idle()
            return
        self._next()

    def _next(self) -> None:
        """After an answer: the next request waiting, or the keep-alive wait."""
        if self._queue:
            item = self._queue.popleft()
            if not self._queue:
                self._queue = None
            if self._queue_paused and len(self._queue or ()) < MAX_PIPELINED // 2:
                self._queue_paused = False
                self._resume_reading()
            if isinstance(item, Refusal):
                self._send_refusal(item)
            else:
                self._start(item)
        else:
            if not self._in_message:  # idle between requests: the next one gets a new parser
                self._parser = None
            self._set_deadline(self._owner.keepalive_timeout_s)
            if self._idle_waiter is not None:  # a drain waits for this connection
                self._wake_idle()

    # -- answers ---------------------------------------------------------------------------

    def answer_head(self, request: Request, status: int, headers: bytes, framing: bytes) -> bytes:
        """Status line and headers; decides whether the connection stays open: not when
        the caller or a limit says so, nor when the body was not read to its end."""
        if request.keep_alive and not (request.body.done and not self._owner.draining):
            request.keep_alive = False
        if request.keep_alive:
            connection = b"" if request.version == "1.1" else b"Connection: keep-alive\r\n"
        else:
            connection = b"Connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\n%b%b%b%b\r\n" % (status, _REASONS.get(status, b""), headers, framing,
                                                   _date_line(), connection)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._tls is None:
                transport.write(data)
            else:
                self._tls.write(data)

    async def drain(self) -> None:
        if self._stopped and (self.transport is None or self.transport.is_closing()):
            raise ConnectionResetError("the caller closed the connection")
        if self._write_paused:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self.transport is None or self.transport.is_closing():
                raise ConnectionResetError("the caller closed the connection")

    def abort(self) -> None:
        self._stopped = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """End the connection once what was written is sent (with TLS: after close_notify)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self._tls is not None:
                self._tls.close_notify()
            transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self._tls is not None:
            self._tls.paused = True

    def resume_reading(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.resume_reading()
        tls = self._tls
        if tls is not None and tls.paused:
            tls.paused = False
            if tls.has_pending:
                self.loop.call_soon(self._pump_tls)

    def send_continue(self) -> None:
        active = self._active
        if active is not None and not active.responded:
            self.write(CONTINUE)

    def _send_json(self, request: Request, status: int, code: str, message: str) -> None:
        request_id = request_id_from(None)
        body = json_error_body(code, message, request_id)
        request.respond(status, b"Content-Type: application/json\r\nx-request-id: %s\r\n" % request_id.encode(), body)

    def _refuse(self, refusal: Refusal) -> None:
        """Stop reading; answer the refusal in turn, then close."""
        if self._handed_over_body():
            self._refuse_handed_over(refusal)
            return
        if self._stopped:
            return
        self._stopped = True
        self._owner.refused(refusal.reason)
        log.debug("refused a request from %s: %s", self.remote, refusal.message)
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            parsing.body.fail(ConnectionResetError("the request was malformed"))
            if parsing is self._active and not parsing.responded:
                # Its body turned out malformed before any answer: the refusal is the answer,
                # under the request's id, and the handler records it as such (not as a 499).
                parsing.refusal = refusal
                refusal.request_id = parsing.request_id
                if self._task is not None:
                    self._task.cancel()
                    self._task = None
                self._active = None
        self.pause_reading()
        if self._active is None and not self._queue:
            self._send_refusal(refusal)
        else:
            self._enqueue(refusal)

    def _handed_over_body(self) -> bool:
        """The body being parsed is the one of the request aiohttp is answering."""
        parsing = self._parsing
        return parsing is not None and parsing.handed_over and parsing is self._active

    def _refuse_handed_over(self, refusal: Refusal) -> None:
        """The body of the request aiohttp answers turned out malformed (or over a limit):
        aiohttp lets go of the connection at once (nothing it writes after this reaches
        the caller) and the connection ends. The refusal is the answer only if nothing of
        aiohttp's went out yet; else its answer stays the only one: closed after it if it
        was whole, cut if not (never a 400 after it, or inside it)."""
        self._stopped = True
        self._owner.refused(refusal.reason)
        log.debug("refused a request from %s: %s", self.remote, refusal.message)
        self._parsing.body.fail(ConnectionResetError("the request was malformed"))
        self._parsing = self._active = None
        handover, delegate = self._handover, self._delegate
        self._handover = self._delegate = None
        if handover is not None:
            handover.detached = True
        if delegate is not None:
            delegate.connection_lost(ConnectionResetError("the request was malformed"))
        self.pause_reading()
        if handover is None or not handover.started:
            self._send_refusal(refusal)
        elif handover.answered:
            self.close()
        else:
            self.abort()
        self._wake_idle()

    def _enqueue(self, item: Request | Refusal) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)

    def _send_refusal(self, refusal: Refusal) -> None:
        request_id = refusal.request_id or request_id_from(None)
        body = json_error_body(refusal.code, refusal.message, request_id)
        answer = (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nx-request-id: %s\r\n"
                  b"Content-Length: %d\r\n%bConnection: close\r\n\r\n%b"
                  % (refusal.status, _REASONS.get(refusal.status, b""), request_id.encode(), len(body),
                     _date_line(), body))
        self.write(answer)
        if refusal.request_id is None:  # else the handler that had the request records it
            self._owner.refusal_answered(refusal, request_id, self.remote, len(answer))
        self._deadline = None
        self.close()

    # -- deadlines: the first head (slowloris), then the keep-alive wait -------------------

    def _set_deadline(self, delay_s: float) -> None:
        deadline = self._deadline = self.loop.time() + delay_s
        timer = self._timer
        # A timer due before the deadline re-arms itself when it fires (cheaper than
        # one timer per request); one due later is replaced.
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport is None or self.transport.is_closing():
            return
        if self.loop.time() < deadline:
            self._timer = self.loop.call_at(deadline, self._on_timer)
            return
        if self._tls is not None and not self._tls.established:
            self._stopped = True
            self._owner.refused("tls_handshake_timeout")
            self.abort()  # no request can be answered before the handshake
        elif self._handed_over_body():
            self._refuse_handed_over(Refusal(408, "ClientRequestTimeout", "the request body did not arrive in time",
                                             reason="body_timeout"))
        elif self._heads == 0:
            self._stopped = True
            self._owner.refused("header_timeout")
            self._send_refusal(Refusal(408, "ClientRequestTimeout", "the request headers did not arrive in time"))
        elif self._held:
            unread = self.transport.get_write_buffer_size()
            if unread < self._unread:  # read, slowly: another while (nginx's send_timeout)
                self._unread = unread
                self._set_deadline(self._owner.keepalive_timeout_s)
                return
            self._stopped = True
            self._owner.refused("answers_unread")
            self.abort()  # nothing read for that long: closing would wait for it for ever
        else:
            self._stopped = True
            self.close()  # idle (or a later head too slow) past the keep-alive timeout

    # -- back-pressure -----------------------------------------------------------------------

    def pause_reading_for_body(self) -> None:
        if not self._body_paused and self.transport is not None:
            self._body_paused = True
            self.pause_reading()

    def resume_reading_for_body(self) -> None:
        if self._body_paused:
            self._body_paused = False
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self._body_paused or self._queue_paused or self._held or self.transport is None \
                or self.transport.is_closing():
            return
        if not self._stopped or self._lingering or self._delegate is not None:
            self.resume_reading()

    # -- for the listener ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._active is not None or bool(self._queue)

    def close_when_idle(self) -> None:
        """Shutdown: close now if idle; a request being answered finishes first."""
        if not self.busy and self.transport is not None:
            self._stopped = True
            self.close()

    async def wait_idle(self) -> None:
        while self.busy and self.transport is not None and not self.transport.is_closing():
            self._idle_waiter = self.loop.create_future()
            await self._idle_waiter

    def _wake_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """Shutdown after the grace period: cancel what runs and close."""
        if self._task is not None:
            self._task.cancel()
        self.abort()

    def _hand_over(self, request: Request) -> None:
        """Give the connection to an aiohttp protocol for this request (and its answer)."""
        # A HEAD's answer has no body its head announces: it is not followed, it closes.
        keep_alive = request.keep_alive and request.method != "HEAD"
        if not keep_alive:
            self._stopped = True  # nothing after this request is read by us
        self._deadline = None
        handler = self._owner.aiohttp_protocol()
        self._delegate = handler
        self._handover = HandedOverTransport(
            self.transport if self._tls is None else
            TlsTransport(self, self._tls, self.transport, self._owner.ssl_context),
            keep_alive, self._answered_by_aiohttp)
        handler.connection_made(self._handover)
        lines = [b"%s %s HTTP/%s\r\n" % (request.method.encode(), request.target, request.version.encode())]
        lines.extend(b"%s: %s\r\n" % (n, v) for n, v in request.raw_headers if n.lower() not in _DROP_ON_HANDOVER)
        lines.append(b"Connection: close\r\n\r\n" if not keep_alive else
                     b"\r\n" if request.version == "1.1" else b"Connection: keep-alive\r\n\r\n")
        handler.data_received(b"".join(lines))
        early = request.body.take()
        if early:
            handler.data_received(b"%x\r\n%b\r\n" % (len(early), early) if request.chunked else early)
        if request.body.done and request.chunked:
            handler.data_received(b"0\r\n\r\n")
        if self._parsing is request:  # its body must keep arriving (renewed by on_body)
            self._set_deadline(self._owner.keepalive_timeout_s)
        self._resume_reading_for_handover()

    def _resume_reading_for_handover(self) -> None:
        self._body_paused = False
        if self._stopped:
            self._queue_paused = False
        if self._parsing is not None:
            self._resume_reading()  # the rest of the handed-over body

    def _answered_by_aiohttp(self, handover: HandedOverTransport) -> None:
        """aiohttp's answer is whole and keeps the connection (HandedOverTransport)."""
        request = self._active
        if handover is self._handover and request is not None and request is not self._parsing:
            self.loop.call_soon(self._take_back, handover)  # else when the body is in (on_message_complete)

    def _take_back(self, handover: HandedOverTransport) -> None:
        """After a kept-alive hand-over: aiohttp lets go of the connection, which goes on
        with the next request (parsed here), or waits for one."""
        if handover is not self._handover or self.transport is None or self.transport.is_closing():
            return  # closing: aiohttp's protocol hears of the end with the connection's (connection_lost)
        delegate = self._delegate
        self._handover = self._delegate = None
        handover.detached = True  # aiohttp writes, reads and closes nothing any more
        delegate.connection_lost(None)
        self._active = None
        if self._owner.draining:
            self._stopped = True
            self.close()
            self._wake_idle()
            return
        self._resume_reading()  # if aiohttp had paused it
        if self._write_paused:  # the caller does not read: as _finish
            self._held = True
            self._unread = self.transport.get_write_buffer_size()
            self.pause_reading()
            self._set_deadline(self._owner.keepalive_timeout_s)
            self._wake_idle()
            return
        self._next()
