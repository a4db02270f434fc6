"""ServerTLS behind the two servers that use it: the scoring port (router.listener, TLS
terminated by each connection: router/tls_termination.py) and a real aiohttp server
(web.AppRunner + web.TCPSite, the loop's TLS, as the admin side listens): rotation while
a long request is in flight, plain HTTP on the TLS port, client certificates, and the
HTTP→HTTPS redirect listener. Run on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from prometheus_client import CollectorRegistry

from router.listener import ConnectionLimits, Listener
from tls import CertificateSource, ServerTLS, TLSMetrics
from tls.redirect import certificate_names, redirect_app

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


@dataclass
class Files:
    source: CertificateSource
    ca: trustme.CA

    def issue(self, *names: str) -> int:
        """Write a new certificate for `names` into the source's files; returns its serial."""
        leaf = self.ca.issue_cert(*names)
        self.source.key_file.write_bytes(leaf.private_key_pem.bytes())
        self.source.cert_file.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number

    def client(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


SLOW_STARTED = [0]  # /slow requests the servers below have begun to answer


def _app() -> web.Application:
    async def slow(request: web.Request) -> web.Response:
        SLOW_STARTED[0] += 1
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="slow done")

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.add_routes([web.get("/slow", slow), web.get("/", hello)])
    return app


async def _scoring_port_handler(request) -> None:
    """The same two paths as _app(), answered by the scoring port's own server."""
    if request.path == "/slow":
        SLOW_STARTED[0] += 1
        await asyncio.sleep(float(request.query.partition("s=")[2] or "1"))
        request.respond(200, b"Content-Type: text/plain\r\n", b"slow done")
    else:
        request.respond(200, b"Content-Type: text/plain\r\n", b"hello")


@contextlib.asynccontextmanager
async def serving(server: str, ssl_context: ssl.SSLContext) -> AsyncIterator[int]:
    """`server`: "scoring-port" (router.listener.Listener) or "aiohttp"."""
    if server == "aiohttp":
        async with running(_app(), ssl_context) as port:
            yield port
        return
    listener = Listener(_scoring_port_handler, host="127.0.0.1", port=0, ssl_context=ssl_context,
                        limits=ConnectionLimits(), keepalive_timeout_s=30)
    await listener.start()
    try:
        yield listener.port
    finally:
        await listener.drain(1)


SERVERS = ["scoring-port", "aiohttp"]


@contextlib.asynccontextmanager
async def running(app: web.Application, ssl_context: ssl.SSLContext | None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 GET on an open connection."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, await asyncio.wait_for(reader.readexactly(length), timeout=10)


def _serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def _open(port: int, ctx: ssl.SSLContext):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="api.test"), timeout=5
    )


@pytest.fixture
def files(tmp_path: Path) -> Files:
    out = Files(CertificateSource("api", tmp_path / "api.pem", tmp_path / "api-key.pem"), trustme.CA())
    out.issue("api.test", "127.0.0.1")
    return out


async def rotation_during_long_request(files: Files, kind: str) -> None:
    registry = CollectorRegistry()
    server = ServerTLS([files.source], metrics=TLSMetrics(registry))
    server.watch(0.05)
    old_serial = server.certificates["api"].serial
    try:
        async with serving(kind, server.context) as port:
            reader, writer = await _open(port, files.client())
            assert _serial(writer) == old_serial
            started = SLOW_STARTED[0]
            in_flight = asyncio.create_task(_request(reader, writer, "/slow?s=1.5"))
            for _ in range(200):  # the server is answering it (bounded)
                if SLOW_STARTED[0] > started:
                    break
                await asyncio.sleep(0.01)
            assert SLOW_STARTED[0] > started, "the slow request never reached the server"

            new_serial = files.issue("api.test", "127.0.0.1")
            for _ in range(100):  # the watcher needs two rounds to accept a change
                if server.certificates["api"].serial == new_serial:
                    break
                await asyncio.sleep(0.05)
            assert server.certificates["api"].serial == new_serial
            assert not in_flight.done()

            r2, w2 = await _open(port, files.client())
            assert _serial(w2) == new_serial
            assert await _request(r2, w2, "/") == (200, b"hello")
            w2.close()

            assert await in_flight == (200, b"slow done")
            # The old connection stays usable for further keep-alive requests.
            assert await _request(reader, writer, "/") == (200, b"hello")
            assert _serial(writer) == old_serial
            writer.close()
    finally:
        await server.close()
    reloads = registry.get_sample_value(
        "scoregate_tls_certificate_reloads_total", {"name": "api", "outcome": "success"}
    )
    assert reloads == 1
    handshakes = registry.get_sample_value(
        "scoregate_tls_handshakes_total", {"listener": "https", "version": "TLSv1.3", "outcome": "ok"}
    )
    assert handshakes == 2


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(uvloop is None, reason="no uvloop"))]


def run_on(loop: str, coro) -> None:
    """The gateway serves on uvloop, whose TLS code is not asyncio's: test both."""
    (uvloop.run if loop == "uvloop" else asyncio.run)(coro)


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("loop", LOOPS)
def test_rotation_during_long_request(files: Files, loop: str, kind: str) -> None:
    run_on(loop, rotation_during_long_request(files, kind))


def _plain_http(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(payload)
        chunks = []
        while chunk := raw.recv(4096):  # returns b"" once the server closed
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("loop", LOOPS)
def test_plain_http_on_tls_port_is_closed_and_server_stays_healthy(files: Files, loop: str, kind: str) -> None:
    run_on(loop, plain_http_on_tls_port(files, kind))


async def plain_http_on_tls_port(files: Files, kind: str) -> None:
    registry = CollectorRegistry()
    server = ServerTLS([files.source], metrics=TLSMetrics(registry))
    loop_errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
    async with serving(kind, server.context) as port:
        payloads = [b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", b"POST /score HTTP/1.0\r\n\r\n{}",
                    b"\x00" * 64, b"hello\r\n"] * 5
        replies = await asyncio.gather(*(asyncio.to_thread(_plain_http, port, p) for p in payloads))
        assert all(b"HTTP/" not in reply for reply in replies), replies
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=files.client()) as response:
                assert (response.status, await response.text()) == (200, "hello")
    assert loop_errors == []
    not_tls = registry.get_sample_value(
        "scoregate_tls_handshakes_total", {"listener": "https", "version": "unknown", "outcome": "not_tls"}
    )
    assert not_tls >= 10  # the HTTP requests at least; what the junk counts as may vary


@pytest.mark.parametrize("kind", SERVERS)
async def test_client_certificates(files: Files, tmp_path: Path, kind: str) -> None:
    clients = trustme.CA()
    bundle = tmp_path / "clients.pem"
    clients.cert_pem.write_to_path(str(bundle))
    server = ServerTLS([files.source], client_ca_file=bundle)
    async with serving(kind, server.context) as port:
        with_cert = files.client()
        clients.issue_cert("router@clients.test").configure_cert(with_cert)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=with_cert) as response:
                assert response.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://127.0.0.1:{port}/", ssl=files.client()) as response:
                    await response.read()


async def test_redirect_listener(files: Files) -> None:
    server = ServerTLS([files.source])
    async with running(_app(), server.context) as https_port, \
            running(redirect_app(https_port, host_names=certificate_names(server)), None) as http_port:
        base = f"http://127.0.0.1:{http_port}"
        async with aiohttp.ClientSession() as session:
            for method in ("GET", "POST", "DELETE"):
                async with session.request(method, f"{base}/api/v1/endpoint/e/score?x=1&y=%20",
                                           allow_redirects=False) as response:
                    assert response.status == 308
                    assert response.headers["Location"] == (
                        f"https://127.0.0.1:{https_port}/api/v1/endpoint/e/score?x=1&y=%20"
                    )
            cases = {"api.test:80": "https://api.test:", "API.test": "https://API.test:"}
            for host, prefix in cases.items():
                async with session.get(f"{base}/p", headers={"Host": host}, allow_redirects=False) as response:
                    assert response.headers["Location"] == f"{prefix}{https_port}/p"
            # A Host that is not one of the certificate's names is not sent anywhere (no open
            # redirect, nothing for a shared cache to keep): a JSON 400.
            for host in ("evil.test", "api.test.evil.test:80", "10.9.8.7", "[::1]:8080", "evil.test/x@y"):
                async with session.get(f"{base}/p", headers={"Host": host}, allow_redirects=False) as response:
                    assert response.status == 400 and "Location" not in response.headers, host
                    error = await response.json()
                    assert error["code"] == "BadRequest" and error["request_id"] == response.headers["x-request-id"]
            # The names are the certificates' of the moment: a rotated one's count at once.
            files.issue("api.test", "*.gw.test", "127.0.0.1")
            assert [r.outcome for r in server.reload()] == ["reloaded"]
            async with session.get(f"{base}/p", headers={"Host": "ep.gw.test"}, allow_redirects=False) as response:
                assert response.headers["Location"] == f"https://ep.gw.test:{https_port}/p"
            async with session.get(f"{base}/p", headers={"Host": "a.ep.gw.test"}, allow_redirects=False) as response:
                assert response.status == 400
            # Following the redirect ends at the HTTPS listener.
            async with session.get(f"{base}/", ssl=files.client()) as response:
                assert (response.status, await response.text()) == (200, "hello")
        # HTTP/1.0 without a Host header cannot be redirected anywhere sensible.
        reply = await asyncio.to_thread(_plain_http, http_port, b"GET / HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400"), reply
    app = redirect_app(443, default_host="gateway.test")
    async with running(app, None) as port:
        reply = await asyncio.to_thread(_plain_http, port, b"GET /x HTTP/1.0\r\n\r\n")
        assert b"Location: https://gateway.test/x\r\n" in reply, reply
    with pytest.raises(ValueError):
        redirect_app(0)


@pytest.mark.parametrize("target", ["/%0d%0aX", "/a%0Ab", "*", "http://elsewhere.test/p?q=1"])
async def test_the_redirect_answers_308_whatever_the_target(target: str) -> None:
    """308 for every well-formed request, as documented: a decoded path with a CR or LF,
    or `*`, matched no route of the redirect app and got aiohttp's text 404."""
    async with running(redirect_app(8443, host_names=["gateway.test"]), None) as port:
        reply = await asyncio.to_thread(_plain_http, port, b"OPTIONS %s HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
                                        % target.encode())
    assert reply.startswith(b"HTTP/1.1 308"), reply
    location = reply.split(b"\r\nLocation: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert location == "https://gateway.test:8443" + {"*": "/", "http://elsewhere.test/p?q=1": "/p?q=1"}.get(
        target, target)


def _s_client(port: int, ca: Path, session: Path, resume: bool) -> str:
    """One TLS 1.3 connection with openssl s_client (one request, then the server closes):
    its output, which has a line for each session ticket the client was sent."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "api.test", "-tls1_3",
         "-CAfile", str(ca), "-ign_eof", "-sess_in" if resume else "-sess_out", str(session)],
        input=b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n", capture_output=True, timeout=30)
    return done.stdout.decode(errors="replace")


@pytest.mark.parametrize("kind", SERVERS)
async def test_one_session_ticket_per_connection_and_it_resumes(files: Files, tmp_path: Path, kind: str) -> None:
    ca, session = tmp_path / "ca.pem", tmp_path / "session.pem"
    files.ca.cert_pem.write_to_path(str(ca))
    async with serving(kind, ServerTLS([files.source]).context) as port:
        first = await asyncio.to_thread(_s_client, port, ca, session, False)
        assert "hello" in first and "New, TLSv1.3" in first
        assert first.count("New Session Ticket arrived") == 1, first
        again = await asyncio.to_thread(_s_client, port, ca, session, True)
        assert "hello" in again and "Reused, TLSv1.3" in again
        assert again.count("New Session Ticket arrived") == 1, again  # so the next one resumes too


def _handshake_error(port: int, context: ssl.SSLContext) -> ssl.SSLError | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="api.test"):
                return None
        except ssl.SSLError as exc:
            return exc


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_a_refused_handshake_tells_the_client_why(files: Files) -> None:
    """The scoring port closed a refused handshake without the alert OpenSSL had written:
    a client offering only TLS 1.1 read "unexpected eof" instead of "protocol version"."""
    server = ServerTLS([files.source], metrics=TLSMetrics(CollectorRegistry()))
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    async with serving("scoring-port", server.context) as port:
        error = await asyncio.to_thread(_handshake_error, port, old)
    assert error is not None and error.reason == "TLSV1_ALERT_PROTOCOL_VERSION", error


def _tls12_reused(port: int, ca: Path, tickets: bool) -> bool:
    """Connect twice with TLS 1.2, the second time offering the first session."""
    context = ssl.create_default_context(cafile=str(ca))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    session = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="api.test", session=session) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
            while conn.recv(65536):
                pass
            reused, session = conn.session_reused, conn.session
    return reused


@pytest.mark.parametrize("kind", SERVERS)
async def test_tls12_resumes_with_tickets_only(files: Files, tmp_path: Path, kind: str) -> None:
    """docs/tls.md: no server-side session-ID cache. OpenSSL's was on: a TLS 1.2 client
    without tickets resumed from a per-process cache (one per --workers process, up to
    20,480 sessions each) that the ticket keys' sharing does not cover."""
    ca = tmp_path / "ca.pem"
    files.ca.cert_pem.write_to_path(str(ca))
    async with serving(kind, ServerTLS([files.source]).context) as port:
        assert await asyncio.to_thread(_tls12_reused, port, ca, True)
        assert not await asyncio.to_thread(_tls12_reused, port, ca, False)


def _outcomes(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.labels["version"], s.labels["outcome"]): s.value
            for metric in registry.collect() for s in metric.samples
            if s.name == "scoregate_tls_handshakes_total" and s.labels["listener"] == "https"}


def _full_exchange(port: int, ctx: ssl.SSLContext, session=None):
    """Handshake, one request, close; returns (session, reused) for the next one."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.test", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
            return tls.session, tls.session_reused


def _client_hello_then_close(port: int) -> None:
    """A client that begins a handshake and leaves before it ends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="api.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        hello.do_handshake()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(outgoing.read())
        raw.recv(1)  # the server's first flight is on its way: the handshake has begun


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", SERVERS)
async def test_every_handshake_outcome_is_counted(files: Files, kind: str) -> None:
    """What scoregate_tls_handshakes_total says on each server, the scoring port counting
    its own handshakes and aiohttp's through the SSLObject class."""
    registry = CollectorRegistry()
    server = ServerTLS([files.source], metrics=TLSMetrics(registry), listener="https")
    async with serving(kind, server.context) as port:
        tls12 = files.client()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        session, reused = await asyncio.to_thread(_full_exchange, port, tls12)
        assert not reused
        _, reused = await asyncio.to_thread(_full_exchange, port, tls12, session)
        assert reused
        await asyncio.to_thread(_full_exchange, port, files.client())

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_full_exchange, port, old)
        assert b"HTTP/" not in await asyncio.to_thread(_plain_http, port, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        await asyncio.to_thread(_client_hello_then_close, port)
        await asyncio.to_thread(socket.create_connection(("127.0.0.1", port), timeout=5).close)  # a TCP check

        # A connection that sent no byte began no handshake on the scoring port (docs/tls.md);
        # the loop's TLS begins one as the connection is made, so it is abandoned there.
        checks = 1 if kind == "aiohttp" else 0
        expected = {("TLSv1.2", "ok"): 1, ("TLSv1.2", "resumed"): 1, ("TLSv1.3", "ok"): 1,
                    ("unknown", "protocol_version"): 1, ("unknown", "not_tls"): 1,
                    ("unknown", "abandoned"): 1 + checks}
        for _ in range(100):  # the server sees the last close a moment later (bounded)
            gc.collect()  # the loop's TLS counts an abandoned handshake when its object is freed
            if _outcomes(registry) == expected:
                break
            await asyncio.sleep(0.02)
        assert _outcomes(registry) == expected
        assert registry.get_sample_value("scoregate_tls_handshakes_started_total", {"listener": "https"}) == 6 + checks
        assert registry.get_sample_value("scoregate_tls_handshakes_created", {
            "listener": "https", "version": "TLSv1.3", "outcome": "ok"}) is not None
        chosen = registry.get_sample_value("scoregate_tls_certificate_selections_total",
                                           {"listener": "https", "name": "api", "match": "exact"})
        # The three exchanges and the client that left chose it; the TLS 1.1 client was
        # refused before a certificate is chosen, plain HTTP and the TCP check sent no name.
        assert chosen == 4
