"""Messages between the main process and one worker: length-prefixed pickles on a socket.

Both ends are our own processes (the worker is spawned by the main process and is
handed one end of a socketpair), so pickle carries the frozen routing-table dataclasses
as they are. A message is a dict with an "op"; one with an "id" wants an answer, which
comes back as {"reply_to": id, "result": ...} or {"reply_to": id, "error": "..."}.
Frames are bounded (MAX_FRAME) and every request waits a bounded time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import struct
from typing import Awaitable, Callable

log = logging.getLogger("scoregate.workers")

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024

Handler = Callable[[dict], Awaitable[object] | object]


class ChannelClosed(ConnectionError):
    """The other process is gone (or closed its end)."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        self._reader, self._writer = reader, writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed = False

    @classmethod
    async def over(cls, sock, handler: Handler) -> "Channel":
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer, handler)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: dict) -> None:
        """Queue one message (no answer expected). Raises ChannelClosed."""
        if self._closed or self._writer.is_closing():
            raise ChannelClosed("the channel is closed")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > MAX_FRAME:
            raise ValueError(f"a {len(data)}-byte message is over the {MAX_FRAME}-byte frame limit")
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def request(self, message: dict, timeout_s: float = 5.0) -> object:
        """Send and wait (bounded) for the answer."""
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.send({**message, "id": ident})
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            self._waiting.pop(ident, None)

    async def run(self) -> None:
        """Read and dispatch until the other end closes; then fail whoever still waits."""
        try:
            while True:
                header = await self._reader.readexactly(_HEADER.size)
                (size,) = _HEADER.unpack(header)
                if size > MAX_FRAME:
                    raise ConnectionError(f"a {size}-byte frame is over the limit")
                message = pickle.loads(await self._reader.readexactly(size))
                if "reply_to" in message:
                    future = self._waiting.get(message["reply_to"])
                    if future is not None and not future.done():
                        if "error" in message:
                            future.set_exception(RuntimeError(message["error"]))
                        else:
                            future.set_result(message.get("result"))
                    continue
                await self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._closed = True
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ChannelClosed("the other process went away"))
            self._writer.close()

    async def _dispatch(self, message: dict) -> None:
        ident = message.get("id")
        try:
            result = self._handler(message)
            if asyncio.iscoroutine(result):
                result = await result
            answer = {"reply_to": ident, "result": result}
        except Exception as exc:  # an answer, not a dead channel
            log.exception("handling %r failed", message.get("op"))
            answer = {"reply_to": ident, "error": f"{type(exc).__name__}: {exc}"}
        if ident is not None and not self._closed:
            try:
                self.send(answer)
            except ChannelClosed:
                pass

    def close(self) -> None:
        self._closed = True
        self._writer.close()
