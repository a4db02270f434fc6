"""Router pods share TLS session ticket keys through a Secret: a session made on one router
resumes on another (TLS 1.2 and 1.3), the Secret is made once however many routers start
together, and a rotated Secret is installed (tickets of the old keys then get a full
handshake, new ones resume everywhere). Real routers, real TLS sockets, the emulated API."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl

import pytest

from serving.backends.kubernetes.router_running import KubernetesRouter
from serving.backends.kubernetes.ticket_keys import SharedTicketKeys
from tests.kubernetes.conftest import eventually
from tests.kubernetes.router_cluster import SYSTEM, router_settings
from tls import ensure_dev_certificates

SECRETS = ("", "v1", "secrets")
TICKET_SECRET = "scoregate-tls-ticket-keys"


def _visit(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None):
    """One HTTPS request read to its end (TLS 1.3 tickets arrive with it): (session, reused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 "), answer[:100]
            return tls.session, tls.session_reused


async def visit(router: KubernetesRouter, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None):
    return await asyncio.to_thread(_visit, router.port, ctx, session)


def client(ca_file: str, tls12: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def secret_keys(apiserver) -> bytes:
    return base64.b64decode(apiserver.get(SECRETS, SYSTEM, TICKET_SECRET)["data"]["ticket.key"])


@pytest.fixture
async def routers(apiserver, kubeconfig, tmp_path):
    """routers(*identities): started together, serving the same certificate (as pods with
    the same TLS Secret do), each with its own API client, listener and watches."""
    certs = tmp_path / "shared-tls"
    paths = ensure_dev_certificates(certs)
    started: list[KubernetesRouter] = []

    async def start(*identities: str) -> list[KubernetesRouter]:
        group = [KubernetesRouter(router_settings(kubeconfig, i, tmp_path, coordination=False,
                                                  dev_cert_dir=str(certs))) for i in identities]
        started.extend(group)
        await asyncio.gather(*(r.start() for r in group))
        return group

    start.ca = str(paths.ca_cert)
    yield start
    for router in started:
        await router.close()


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
async def test_a_session_from_one_router_resumes_on_another(routers, apiserver, tls12):
    a, b = await routers("router-a", "router-b")
    ctx = client(routers.ca, tls12)
    session, reused = await visit(a, ctx)
    assert session is not None and session.has_ticket and not reused
    _, reused = await visit(b, ctx, session)
    assert reused, "a ticket from router A did not resume on router B"

    session, _ = await visit(b, ctx)  # and the other way round
    _, reused = await visit(a, ctx, session)
    assert reused
    assert a.ticket_keys.shared and b.ticket_keys.shared
    assert len(secret_keys(apiserver)) == 80


async def test_routers_starting_together_make_the_secret_once(routers, apiserver):
    writes: list[str] = []
    apiserver.listeners.append(lambda res, event, obj: writes.append(event) if res == SECRETS and
                               obj["metadata"]["name"] == TICKET_SECRET else None)
    first = await routers("router-a", "router-b", "router-c")
    # A router whose read came before another's create (a 404), so its own create is
    # answered 409: it takes the Secret that is there.
    late_read = apiserver.fail_next("GET", "secrets", 404)
    late = await routers("router-d")
    assert late_read.hits == 1

    assert writes == ["ADDED"], "the Secret was written more than once"
    keys = secret_keys(apiserver)
    assert [r.ticket_keys.keys for r in first + late] == [keys] * 4
    ctx = client(routers.ca)
    session, _ = await visit(first[2], ctx)
    _, reused = await visit(late[0], ctx, session)
    assert reused


async def test_rotated_keys_are_installed_and_old_tickets_get_a_full_handshake(routers, apiserver):
    a, b = await routers("router-a", "router-b")
    ctx = client(routers.ca)
    old_session, _ = await visit(a, ctx)

    rotated = b"R" * 80  # what `openssl rand 80` would give an operator
    apiserver.update(SECRETS, SYSTEM, TICKET_SECRET,
                     lambda s: s["data"].__setitem__("ticket.key", base64.b64encode(rotated).decode()))
    await eventually(lambda: a.ticket_keys.keys == rotated and b.ticket_keys.keys == rotated,
                     what="both routers installed the rotated keys")
    _, reused = await visit(b, ctx, old_session)
    assert not reused, "a ticket of the previous keys still resumed"
    new_session, reused = await visit(b, ctx)
    assert not reused
    _, reused = await visit(a, ctx, new_session)
    assert reused

    # Content that is not 80 bytes is refused; the keys in use stay.
    apiserver.update(SECRETS, SYSTEM, TICKET_SECRET, lambda s: s["data"].__setitem__("ticket.key", "c2hvcnQ="))
    await eventually(lambda: a.ticket_keys.installs[-1:] == ["refused"] and b.ticket_keys.installs[-1:] == ["refused"],
                     what="the short keys refused")
    _, reused = await visit(a, ctx, new_session)
    assert reused and a.ticket_keys.keys == rotated


async def test_a_router_the_api_refuses_keeps_its_own_keys_and_serves(routers, apiserver, caplog):
    apiserver.fail_next("GET", "secrets", 403)  # e.g. RBAC not yet updated for the Secret
    (a,) = await routers("router-a")
    assert not a.ticket_keys.shared
    assert "keeps its own ticket keys" in caplog.text and "403" in caplog.text
    ctx = client(routers.ca)
    session, reused = await visit(a, ctx)
    assert session.has_ticket and not reused
    _, reused = await visit(a, ctx, session)
    assert reused  # its own keys: resumption on this router, as before


async def test_a_secret_fixed_after_the_router_started_is_installed(routers, apiserver):
    """A router that found the Secret unusable at start (not 80 bytes here; RBAC or the API
    server down alike) follows it, and installs it once an operator fixes it."""
    apiserver.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {"name": TICKET_SECRET, "namespace": SYSTEM},
                               "data": {"ticket.key": base64.b64encode(b"short").decode()}})
    a, b = await routers("router-a", "router-b")
    assert not a.ticket_keys.shared and not b.ticket_keys.shared
    fixed = b"F" * 80
    apiserver.update(SECRETS, SYSTEM, TICKET_SECRET,
                     lambda s: s["data"].__setitem__("ticket.key", base64.b64encode(fixed).decode()))
    await eventually(lambda: a.ticket_keys.keys == fixed and b.ticket_keys.keys == fixed,
                     what="both routers installed the fixed keys")
    ctx = client(routers.ca)
    session, _ = await visit(a, ctx)
    _, reused = await visit(b, ctx, session)
    assert reused


async def test_keys_that_cannot_be_installed_leave_the_contexts_own(kube_api, apiserver, caplog):
    keys = SharedTicketKeys(kube_api, object(), SYSTEM)  # not an SSLContext: tickets.py says False
    try:
        assert await keys.start() is False
    finally:
        await keys.close()
    assert not keys.shared
    assert "not installed, this router keeps its own ticket keys" in caplog.text
    assert apiserver.get(SECRETS, SYSTEM, TICKET_SECRET) is not None  # made for the routers that can use it


def test_the_shipped_router_role_allows_the_ticket_keys_secret():
    """Without these rules every pod gets 403 and keeps its own keys (the previous test)."""
    import yaml

    from tests.kubernetes.router_cluster import ROOT

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac" / "router.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == SYSTEM)
    granted = {(verb, name) for rule in role["rules"] if "secrets" in rule["resources"] and "" in rule["apiGroups"]
               for verb in rule["verbs"] for name in rule.get("resourceNames") or [None]}
    for verb in ("get", "list", "watch"):
        assert (verb, TICKET_SECRET) in granted or (verb, None) in granted, verb
    assert ("create", None) in granted  # create cannot be limited to a name
