"""TLS on the scoring port, terminated inside the connection's own protocol.

Why not the event loop's TLS (`create_server(ssl=...)`): uvloop's TLS layer gives every
connection a 256 KiB read buffer of its own (at least one touched page, ~4 KB resident
per idle connection), a protocol and a transport object, and a handshake timer; and it
adds its own steps around every read and write. Here a connection is one SSLObject over
two memory BIOs, driven by router.http1.HttpConnection:

    socket → the listener's shared ciphertext buffer → TlsSession.receive() → the
    incoming BIO → read() into the listener's shared plaintext buffer →
    HttpConnection.data_received() (parsed at once; httptools hands out copies)

    answer bytes → TlsSession.write() → write() → the outgoing BIO → one
    transport.write() of the records

(read() and write() of the C object under the SSLObject: see TlsSession.__init__.)

The handshake happens in receive() as the client's flights arrive; its deadline is the
connection's head deadline (`header_timeout_s`): a client that has not finished the
handshake and sent a request head by then is dropped. The session counts its own
handshake (tls.metrics.HandshakeCounts: begun, and how it ended, abandoned included
when the connection is lost first), so the connection needs no `ssl.SSLObject` and
no Python layer around the C object (`SSLContext._wrap_bio`, what
`SSLContext.wrap_bio` calls): 55 → 27 Python calls for a connection that only
handshakes (docs/performance.md, session fourteen). The SNI switch of
tls.rotation works as before (its callback gets the C object, whose `context` it sets).
"""

from __future__ import annotations

import asyncio
import ssl

_NEW, _STARTED, _ENDED = "new", "started", "ended"  # the handshake's steps


class TlsSession:
    """One connection's TLS state. `write_raw` sends ciphertext (the TCP transport's write);
    `handshakes` (tls.metrics.HandshakeCounts, or None) counts the handshake."""

    __slots__ = ("_io", "_incoming", "_outgoing", "_write_raw", "_handshakes", "_handshake",
                 "established", "paused", "_closed")

    def __init__(self, context: ssl.SSLContext, write_raw, handshakes=None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The C object ssl.SSLObject wraps, without the wrapper: its methods only pass
        # each call on (one Python call per read, write and pending check, ~1k
        # instructions per request, and the handshake's).
        self._io = context._wrap_bio(  # noqa: SLF001
            self._incoming, self._outgoing, server_side=True, server_hostname=None)
        self._write_raw = write_raw
        self._handshakes = handshakes
        self._handshake = _NEW  # begun with the client's first byte: a TCP check begins none
        self.established = False  # the handshake is done
        self.paused = False  # the reader paused: plaintext stays in the SSLObject until resumed
        self._closed = False  # close_notify sent

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """An `ssl.SSLObject` over this session (for `get_extra_info("ssl_object")`)."""
        wrapper = ssl.SSLObject.__new__(ssl.SSLObject)
        wrapper._sslobj = self._io  # noqa: SLF001 - what SSLObject._create sets
        return wrapper

    def receive(self, data, plain: memoryview, deliver) -> bool:
        """Take ciphertext (may be empty: go on after a pause) and call deliver(view) with
        each piece of plaintext, a view of `plain` valid only during the call. False when
        the peer closed the session (close_notify). ssl.SSLError: a failed handshake or a
        broken record, after the alert that says so was sent; the connection is then of no
        further use."""
        if data:
            self._incoming.write(data)
        io = self._io
        if not self.established:
            counts = self._handshakes
            if self._handshake is _NEW:
                self._handshake = _STARTED
                if counts is not None:
                    counts.started[0] += 1
            try:
                io.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return True
            except ssl.SSLError as exc:
                self._handshake = _ENDED
                if counts is not None:
                    counts.failed(exc)
                self._flush()  # the alert OpenSSL wrote (protocol_version, handshake_failure...)
                raise
            self._handshake = _ENDED
            self.established = True
            if counts is not None:
                counts.succeeded(io.version(), io.session_reused)
            self._flush()
        incoming = self._incoming
        size = len(plain)
        while not self.paused and (incoming.pending or io.pending()):
            try:
                count = io.read(size, plain)
            except ssl.SSLWantReadError:
                break  # a record only partly in
            except ssl.SSLError:
                self._flush()  # the alert OpenSSL wrote about the broken record
                raise
            if count == 0:
                self._flush()  # what OpenSSL answers to the close, if anything
                return False
            deliver(plain[:count])
        if self._outgoing.pending:  # e.g. a TLS 1.3 key update's answer
            self._flush()
        return True

    def lost(self) -> None:
        """The connection ended: a handshake begun and not ended was abandoned."""
        if self._handshake is _STARTED:
            self._handshake = _ENDED
            if self._handshakes is not None:
                self._handshakes.abandoned()

    @property
    def has_pending(self) -> bool:
        """Plaintext or ciphertext left after a pause."""
        return bool(self._incoming.pending or self._io.pending())

    def write(self, data: bytes) -> None:
        if data and not self._closed:
            self._io.write(data)
            self._write_raw(self._outgoing.read())

    def close_notify(self) -> None:
        """Say the session ends (the TCP close follows); nothing is read after it."""
        self.paused = True  # receive() stops delivering, even in the middle of a read
        if self._closed or not self.established:
            return
        self._closed = True
        try:
            self._io.shutdown()
        except (ssl.SSLError, ValueError):
            pass  # the peer's own close_notify is not awaited: SSLWantReadError
        self._flush()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self._write_raw(self._outgoing.read())


class TlsTransport(asyncio.Transport):
    """The connection as a TLS transport, for the protocol a request is handed over to
    (aiohttp's, for the control plane's extra routes on the scoring port)."""

    def __init__(self, conn, tls: TlsSession, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        super().__init__()
        self._conn, self._tls, self._raw, self._context = conn, tls, raw, context

    def get_extra_info(self, name, default=None):
        sslobj = self._tls.ssl_object
        if name == "sslcontext":
            return self._context
        if name == "ssl_object":
            return sslobj
        if name == "peercert":
            return sslobj.getpeercert()
        if name == "cipher":
            return sslobj.cipher()
        if name == "compression":
            return sslobj.compression()
        return self._raw.get_extra_info(name, default)

    def write(self, data) -> None:
        self._conn.write(data)  # encrypted at once: nothing keeps the caller's buffer

    def writelines(self, list_of_data) -> None:
        self._conn.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def close(self) -> None:
        self._conn.close()

    def abort(self) -> None:
        self._conn.abort()

    def pause_reading(self) -> None:
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        self._conn.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._raw.get_write_buffer_limits()

    def set_protocol(self, protocol) -> None:
        pass  # the connection stays the raw transport's protocol and passes on what arrives

    def get_protocol(self):
        return self._conn
