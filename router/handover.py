"""The transport an aiohttp protocol answers a handed-over request on (router.http1).

The scoring port hands the paths aiohttp serves (the batch job routes) to an aiohttp
protocol on the same connection. Kept alive, the connection is taken back for the next
request once aiohttp's answer is whole: this transport follows what aiohttp writes as a
response to find that end, and shuts aiohttp out of the connection afterwards.
"""

from __future__ import annotations

import asyncio

import httptools

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HandedOverTransport(asyncio.Transport):
    """The connection as the aiohttp protocol of a handed-over request sees it: `inner`
    (the socket's transport, or the connection's TLS as one). When the connection may
    stay open, what aiohttp writes is read as a response (httptools) to see its end: a
    final answer that is whole and keeps the connection (its framing says where it ends)
    sets `answered` and calls `on_answered(self)`. After that (`detached`), nothing aiohttp
    does reaches the connection."""

    def __init__(self, inner: asyncio.Transport, keep_alive: bool, on_answered) -> None:
        super().__init__()
        self._inner, self._on_answered = inner, on_answered
        self._parser = httptools.HttpResponseParser(self) if keep_alive else None
        self._final = False
        self.started = False  # aiohttp wrote some of its answer (a 100 Continue aside)
        self.answered = False
        self.detached = False

    # httptools callbacks: the answer aiohttp writes
    def on_headers_complete(self) -> None:
        self._final = self._parser.get_status_code() >= 200  # not a 100 Continue

    def on_message_complete(self) -> None:
        if self._final:
            parser, self._parser = self._parser, None
            if parser.should_keep_alive():
                self.answered = True
                self._on_answered(self)

    def write(self, data) -> None:
        if self.detached or self.answered:  # nothing after the one answer (the request was the only one)
            return
        self._inner.write(data)
        if not self.started and data != CONTINUE:
            self.started = True
        if self._parser is not None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError:  # not an answer we can follow: it ends the connection
                self._parser = None

    def writelines(self, list_of_data) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        if not self.detached:
            self._inner.close()

    def abort(self) -> None:
        if not self.detached:
            self._inner.abort()

    def pause_reading(self) -> None:
        if not self.detached:
            self._inner.pause_reading()

    def resume_reading(self) -> None:
        if not self.detached:
            self._inner.resume_reading()

    def is_closing(self) -> bool:
        return self.detached or self._inner.is_closing()

    def get_extra_info(self, name, default=None):
        return self._inner.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self):
        return self._inner.get_write_buffer_limits()

    def set_protocol(self, protocol) -> None:
        pass  # the connection stays the transport's protocol and passes on what arrives
