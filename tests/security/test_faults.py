"""Replicas that misbehave: garbage answers, oversized answers, resets — each handled
with its documented status within the deadline, and the gateway recovers."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from router import RouterApp, RouterSettings, RoutingTableHolder
from tests.functional.router_harness import AUTH, assert_idle, deployment, post, table
from tests.fakes.recording_upstream import Script
from tls import client_context, server_context


class GarbageServer:
    """Answers every connection with bytes that are not HTTP."""

    async def start(self):
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        await reader.read(65536)
        writer.write(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    async def close(self):
        self._server.close()
        await self._server.wait_closed()





async def test_garbage_from_the_model_is_502(certs, client):
    garbage = await GarbageServer().start()
    router = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key)),
                       RoutingTableHolder(table(deployment("blue", [garbage.port]))))
    await router.start()
    try:
        status, _, body = await post(client, router)
        assert status == 502 and json.loads(body)["code"] == "ModelConnectionError"
    finally:
        await router.drain(1)
        assert_idle(router)
        await router.close()
        await garbage.close()


async def test_an_oversized_answer_is_refused(make_router, upstream, client):
    router = await make_router(max_response_bytes=1024 * 1024)
    upstream.respond = Script(body=b"x" * (2 * 1024 * 1024))  # declared length over the limit
    status, _, body = await post(client, router)
    assert status == 502 and "exceeds the limit" in json.loads(body)["message"]
    upstream.respond = Script(body=b"y" * (2 * 1024 * 1024), chunks=32)  # streamed, no length
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(client, router)
    upstream.respond = Script()
    assert (await post(client, router))[0] == 200
