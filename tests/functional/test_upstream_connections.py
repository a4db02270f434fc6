"""Keep-alive connections to replicas: reuse, and the safe-retry rule when a replica
closes a connection under a request.

The replica here is a raw asyncio HTTP/1.1 server whose every connection follows a
script: answer, reset on the next request's arrival (its bytes unread, as a server that
closes an idle connection with data in its receive queue does), read it and close
cleanly without answering, or close when idle. It records which requests it answered
and which it read, so each test checks what a model saw, not only what the caller got.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from tls import client_context

from tests.functional.router_harness import AUTH, deployment, post, table, url


class ScriptedReplica(asyncio.Protocol):
    """One connection of a ScriptedServer."""

    def __init__(self, server: "ScriptedServer") -> None:
        self.server = server
        self.buffer = b""
        self.answered_here = 0
        self.transport = None
        self.idle_timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        action = self.server.action(self.server.connections, self.answered_here)
        if action == "reset":  # close at once, this request unread: the kernel sends RST
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length:]
        request_id = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                           if line.lower().startswith("x-request-id:")), "")
        self.server.read.append(request_id)
        if action == "close":  # the request was read: the model may have seen it
            self.transport.close()
            return
        self.server.answered.append(request_id)
        self.answered_here += 1
        body = b'{"ok": true}'
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
        if self.server.idle_close_s is not None:
            self.idle_timer = asyncio.get_running_loop().call_later(
                self.server.idle_close_s, self.transport.close)


class ScriptedServer:
    def __init__(self, action, idle_close_s: float | None = None) -> None:
        self.action = action  # (connection number, requests answered on it) → "answer" | "reset" | "close"
        self.idle_close_s = idle_close_s
        self.connections = 0
        self.read: list[str] = []
        self.answered: list[str] = []
        self.port = 0
        self._server = None

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ScriptedReplica(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()


def metric(router, name: str) -> float:
    return router.recorder.registry.get_sample_value(name, {"endpoint": "ep", "deployment": "blue"}) or 0.0


async def test_connections_are_reused_across_requests(make_router, client):
    async with ScriptedServer(lambda conn, answered: "answer") as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        for _ in range(20):
            assert (await post(client, router))[0] == 200
        assert replica.connections == 1
        assert len(replica.answered) == 20


async def test_reset_of_a_reused_connection_is_sent_again_on_a_new_one(make_router, client):
    # Each connection answers one request; the next one that arrives on it is reset unread.
    async with ScriptedServer(lambda conn, answered: "answer" if answered == 0 else "reset") as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        outcomes = [await post(client, router) for _ in range(10)]
        assert [status for status, _, _ in outcomes] == [200] * 10
        ids = [headers["x-request-id"] for _, headers, _ in outcomes]
        assert replica.answered == ids  # each request answered exactly once, in order
        assert replica.read == ids  # and no model read any request twice
        assert metric(router, "scoregate_upstream_resends_total") == 9
        assert metric(router, "scoregate_replica_ejections_total") == 0  # not the replica's fault


async def test_clean_close_after_a_post_was_read_is_a_502_never_resent(make_router, client):
    async with ScriptedServer(lambda conn, answered: "answer" if answered == 0 else "close") as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        first = await post(client, router)
        assert first[0] == 200
        status, headers, body = await post(client, router)
        assert status == 502 and json.loads(body)["code"] == "ModelConnectionError"
        assert replica.read.count(headers["x-request-id"]) == 1  # seen once, and not sent again
        assert metric(router, "scoregate_upstream_resends_total") == 0


async def test_clean_close_of_a_reused_connection_resends_an_idempotent_request(make_router, client):
    async with ScriptedServer(lambda conn, answered: "answer" if answered == 0 else "close") as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        for _ in range(3):
            async with client.get(url(router, "swagger.json"), headers=AUTH) as response:
                assert response.status == 200
                request_id = response.headers["x-request-id"]
        assert replica.answered.count(request_id) == 1
        assert metric(router, "scoregate_upstream_resends_total") == 2


async def test_a_connection_the_replica_closed_while_idle_is_not_used(make_router, client):
    async with ScriptedServer(lambda conn, answered: "answer", idle_close_s=0.05) as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        for _ in range(3):
            assert (await post(client, router))[0] == 200
            await asyncio.sleep(0.3)  # the replica closes the idle connection meanwhile
        assert replica.connections == 3
        assert len(replica.answered) == 3
        assert metric(router, "scoregate_upstream_resends_total") == 0


async def test_a_replica_resetting_new_connections_unread_is_retried_elsewhere(make_router, client):
    async with ScriptedServer(lambda conn, answered: "reset") as broken, \
            ScriptedServer(lambda conn, answered: "answer") as good:
        router = await make_router(table(deployment("blue", [broken.port, good.port],
                                                    max_concurrent_requests_per_instance=4)),
                                   ejection_failures=100)
        outcomes = [await post(client, router) for _ in range(20)]
        assert [status for status, _, _ in outcomes] == [200] * 20
        assert broken.connections > 0, "some requests were tried on the resetting replica"
        assert broken.read == [] and len(good.answered) == 20
        assert metric(router, "scoregate_upstream_retries_total") == broken.connections


async def test_a_streamed_body_is_sent_whole_after_a_reset_of_a_reused_connection(make_router, client, certs):
    # The caller sends its head, then (0.3 s later) a body over the 1 MiB that is read
    # into memory, so it is streamed. Meanwhile the replica resets the reused connection:
    # the request goes again on a new connection, and the body reaches it once, whole.
    async with ScriptedServer(lambda conn, answered: "answer" if answered == 0 else "reset") as replica:
        router = await make_router(table(deployment("blue", [replica.port])))
        assert (await post(client, router))[0] == 200
        body = b"x" * (2 * 1024 * 1024)
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port, ssl=client_context(certs.ca_cert),
                                                       server_hostname="localhost")
        writer.write(f"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\n"
                     f"Authorization: {AUTH['Authorization']}\r\nx-request-id: streamed-1\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        assert replica.answered.count("streamed-1") == 1 and replica.read.count("streamed-1") == 1
        assert metric(router, "scoregate_upstream_resends_total") == 1
