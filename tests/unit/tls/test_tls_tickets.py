"""Shared session ticket keys (tls.tickets): two listeners built from the same files, as
two `serve --workers` processes are, resume each other's sessions only when they were
given the same keys — on both TLS versions, and for a certificate chosen by SNI."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from tls import ServerTLS, new_ticket_keys
from tls.tickets import install_ticket_keys


def _visit(port: int, ctx: ssl.SSLContext, server_name: str, session: ssl.SSLSession | None = None):
    """Handshake, read the greeting (TLS 1.3 tickets come with it), close: (session, reused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
            assert tls.recv(64)
            return tls.session, tls.session_reused


@pytest.fixture
def two_listeners(issue, serve):
    """two_listeners(keys_a, keys_b): ports of two listeners serving the same two certificates
    (the default one and `api.test`, chosen by SNI), each with the ticket keys given."""
    sources = [issue("default", "localhost").source, issue("api", "api.test").source]

    async def start(keys_a: bytes | None, keys_b: bytes | None) -> tuple[int, int]:
        ports = []
        for keys in (keys_a, keys_b):
            server = ServerTLS(sources, default="default", ticket_keys=keys)
            assert server.shares_ticket_keys == (keys is not None)
            ports.append(await serve(server.context))
        return ports[0], ports[1]

    return start


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
@pytest.mark.parametrize("server_name", ["localhost", "api.test"])
async def test_a_session_resumes_on_the_other_listener_with_the_same_keys(
        two_listeners, client_for, tls12, server_name) -> None:
    keys = new_ticket_keys()
    first, second = await two_listeners(keys, keys)
    client = client_for(tls12)
    session, reused = await asyncio.to_thread(_visit, first, client, server_name)
    assert session is not None and session.has_ticket and not reused
    _, reused = await asyncio.to_thread(_visit, second, client, server_name, session)
    assert reused
    _, reused = await asyncio.to_thread(_visit, first, client, server_name, session)
    assert reused


@pytest.mark.parametrize("keys", ["own", "different"])
async def test_without_the_same_keys_the_other_listener_makes_a_full_handshake(
        two_listeners, client_for, keys) -> None:
    first, second = await two_listeners(*((None, None) if keys == "own" else (new_ticket_keys(), new_ticket_keys())))
    client = client_for()
    session, _ = await asyncio.to_thread(_visit, first, client, "api.test")
    _, reused = await asyncio.to_thread(_visit, second, client, "api.test", session)
    assert not reused
    _, reused = await asyncio.to_thread(_visit, first, client, "api.test", session)
    assert reused  # the ticket itself was good: its own listener takes it


def test_keys_of_the_wrong_size_are_refused() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(ValueError, match="80 bytes"):
        install_ticket_keys(context, b"short")
    assert len(new_ticket_keys()) == 80 and new_ticket_keys() != new_ticket_keys()


def test_what_is_not_an_ssl_context_is_left_alone(caplog) -> None:
    assert install_ticket_keys(object(), new_ticket_keys()) is False  # type: ignore[arg-type]
    assert "stay per process" in caplog.text
