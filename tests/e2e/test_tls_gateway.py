"""TLS as IT operations use it, on a real gateway: own certificates, a refused bad one,
rotation without restart, SNI, endpoints by host name, client certificates, the
HTTP redirect, router→replica mTLS, metrics and a settings file."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request

import pytest
import trustme
from cryptography import x509

from tests.support.gateway import REPO, wait_for
from tests.support.manifests import write_deployment, write_endpoint


def dev_cert(folder, *names):
    args = [a for n in names for a in ("--hostname", n)]
    done = subprocess.run([sys.executable, "-m", "serving.cli", "tls", "dev-cert", *args, "--out", str(folder)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def served_certificate(port: int, server_name: str, cafile: str) -> x509.Certificate:
    context = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def https(port: int, path: str, *, cafile: str, host: str = "localhost", headers=None, data=None,
          cert=None) -> tuple[int, dict, bytes]:
    context = ssl.create_default_context(cafile=cafile)
    if cert:
        context.load_cert_chain(*cert)
    request = urllib.request.Request(f"https://{host}:{port}{path}", data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def echo_manifests(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    write_endpoint(folder, "echo", traffic={"one": 100}, auth_mode="none")
    write_deployment(folder, "echo", "one")
    return folder


def port_of(gw) -> int:
    return int(gw.scoring_url.rsplit(":", 1)[1])


def test_own_certificate_rotation_and_a_broken_file(make_gateway, echo_manifests, tmp_path):
    first = dev_cert(tmp_path / "c1", "localhost", "127.0.0.1")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(first["cert"], live / "tls.crt")
    shutil.copy(first["key"], live / "tls.key")
    gw = make_gateway([str(echo_manifests)], ["--tls-cert", str(live / "tls.crt"), "--tls-key",
                                              str(live / "tls.key"), "--tls-reload-interval", "0.2"])
    gw.wait_ready("echo", ["one"])
    port = port_of(gw)
    before = served_certificate(port, "localhost", first["ca_cert"])
    status, _, body = https(port, "/api/v1/endpoint/echo/score", cafile=first["ca_cert"], data=b"{}")
    assert status == 200 and json.loads(body)["label"] == "one"

    # A long request on an open connection survives the rotation.
    second = dev_cert(tmp_path / "c2", "localhost", "127.0.0.1")
    context = ssl.create_default_context(cafile=first["ca_cert"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as open_conn:
        shutil.copy(second["cert"], live / "tls.crt")
        shutil.copy(second["key"], live / "tls.key")
        def rotated():
            try:  # until the reload, the old certificate does not verify against the new CA
                return served_certificate(port, "localhost", second["ca_cert"]).serial_number != before.serial_number
            except ssl.SSLError:
                return False

        wait_for(rotated, 10, "the new certificate to be served")
        open_conn.sendall(b"POST /api/v1/endpoint/echo/score HTTP/1.1\r\nHost: localhost\r\n"
                          b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        answer = b""
        while chunk := open_conn.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")

    # A broken file is refused: the second certificate stays, the failure is counted.
    (live / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")

    def refused():
        status, metrics = gw.admin("GET", "/metrics")
        return 'scoregate_tls_certificate_reloads_total{name="default",outcome="failure"} 1.0' in metrics

    wait_for(refused, 10, "the broken certificate to be refused")
    still = served_certificate(port, "localhost", second["ca_cert"])
    assert still.serial_number != before.serial_number
    _, metrics = gw.admin("GET", "/metrics")
    assert "scoregate_tls_certificate_expiry_timestamp_seconds" in metrics
    assert "scoregate_tls_handshakes_total" in metrics


def test_the_cli_reaches_a_gateway_serving_a_certificate_it_has_no_ca_or_name_for(make_gateway, echo_manifests,
                                                                                 tmp_path):
    """A certificate for the gateway's public name, from a CA the machine does not trust:
    `endpoint invoke` (and the batch verbs) call https://127.0.0.1:PORT and used to fail
    with CERTIFICATE_VERIFY_FAILED. The CLI now trusts exactly the certificate the gateway
    serves (named in gateway.json), and no other."""
    own = dev_cert(tmp_path / "own", "scoring.example.test")
    gw = make_gateway([str(echo_manifests)], ["--tls-cert", own["cert"], "--tls-key", own["key"]])
    gw.wait_ready("echo", ["one"])
    request = tmp_path / "request.json"
    request.write_text("{}")
    done = gw.cli("endpoint", "invoke", "-n", "echo", "-r", str(request))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "one"

    # Another certificate in its place (another key, the same name and CA) is refused.
    other = dev_cert(tmp_path / "other", "scoring.example.test")
    info_file = gw.state.gateway_file
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "server_cert": other["cert"]}))
    done = gw.cli("endpoint", "invoke", "-n", "echo", "-r", str(request))
    assert done.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in done.stderr, (done.stdout, done.stderr)


def test_a_bad_certificate_stops_the_start_with_the_file_named(tmp_path):
    first = dev_cert(tmp_path / "a", "localhost")
    other = dev_cert(tmp_path / "b", "localhost")
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--state-dir", str(tmp_path / "s"), "--port", "0",
         "--admin-port", "0", "--tls-cert", first["cert"], "--tls-key", other["key"]],
        capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 2
    assert first["cert"] in done.stderr or other["key"] in done.stderr
    assert "match" in done.stderr.lower()


def test_sni_and_endpoints_by_host_name(make_gateway, echo_manifests, tmp_path):
    api = dev_cert(tmp_path / "api", "api.example.test")
    gw = make_gateway([str(echo_manifests)], [
        "--tls-sni-cert", f"cert={api['cert']},key={api['key']},name=api",
        "--domain", "scoring.example.test"])
    gw.wait_ready("echo", ["one"])
    port = port_of(gw)
    dev_ca = gw.info.ca_cert
    assert "CN=api.example.test" in served_certificate(port, "api.example.test", api["ca_cert"]).subject.rfc4514_string()
    default = served_certificate(port, "localhost", dev_ca)
    assert "api.example.test" not in default.subject.rfc4514_string()
    # https://echo.scoring.example.test/score — the dev certificate covers *.DOMAIN.
    context = ssl.create_default_context(cafile=dev_ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="echo.scoring.example.test") as conn:
        conn.sendall(b"POST /score HTTP/1.1\r\nHost: echo.scoring.example.test\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\n{}")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b'"label":"one"' in answer


def test_client_certificates_are_required_when_configured(make_gateway, echo_manifests, tmp_path):
    clients = trustme.CA()
    clients.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    leaf = clients.issue_cert("client@example.test")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    gw = make_gateway([str(echo_manifests)], ["--tls-client-ca", str(tmp_path / "clients-ca.pem")])
    gw.wait_ready("echo", ["one"])
    port = port_of(gw)
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        https(port, "/api/v1/endpoint/echo/score", cafile=gw.info.ca_cert, data=b"{}")
    status, _, _ = https(port, "/api/v1/endpoint/echo/score", cafile=gw.info.ca_cert, data=b"{}",
                         cert=(str(tmp_path / "client.pem"),))
    assert status == 200


def test_http_redirect_and_plain_http_on_the_tls_port(make_gateway, echo_manifests):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        redirect_port = sock.getsockname()[1]
    gw = make_gateway([str(echo_manifests)], ["--http-redirect-port", str(redirect_port)])
    gw.wait_ready("echo", ["one"])
    port = port_of(gw)
    with socket.create_connection(("127.0.0.1", redirect_port), timeout=5) as conn:
        conn.sendall(b"GET /api/v1/endpoint/echo/swagger.json?x=1 HTTP/1.1\r\nHost: localhost\r\n"
                     b"Connection: close\r\n\r\n")
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 308")
    assert f"Location: https://localhost:{port}/api/v1/endpoint/echo/swagger.json?x=1".encode() in answer
    # Plain HTTP to the TLS port is closed, and the gateway keeps serving.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        conn.settimeout(5)
        try:
            data = conn.recv(1024)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"HTTP/1.1 200")
    status, _, _ = https(port, "/api/v1/endpoint/echo/score", cafile=gw.info.ca_cert, data=b"{}")
    assert status == 200


def test_router_to_replica_mutual_tls(make_gateway, echo_manifests):
    gw = make_gateway([str(echo_manifests)], ["--replica-mtls"])
    gw.wait_ready("echo", ["one"])
    status, _, body = https(port_of(gw), "/api/v1/endpoint/echo/score", cafile=gw.info.ca_cert, data=b"{}")
    assert status == 200 and json.loads(body)["label"] == "one"
    [replica] = gw.deployment("echo", "one")["replicas"]
    # The replica itself speaks only TLS, and only to holders of a router certificate.
    with socket.create_connection(("127.0.0.1", replica["port"]), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.settimeout(5)
        try:
            assert not conn.recv(1024).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            pass
    internal_ca = gw.state.tls_dir / "internal-ca" / "ca.pem"
    context = ssl.create_default_context(cafile=str(internal_ca))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", replica["port"]), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if not tls.recv(1024):
                raise ConnectionError("closed")


def test_settings_file(make_gateway, echo_manifests, tmp_path):
    own = dev_cert(tmp_path / "own", "localhost", "127.0.0.1")
    settings = tmp_path / "serve.yml"
    settings.write_text(f"tls:\n  cert: {own['cert']}\n  key: {own['key']}\n  reload_interval: 0\n")
    gw = make_gateway([str(echo_manifests)], ["--config", str(settings)])
    gw.wait_ready("echo", ["one"])
    cert = served_certificate(port_of(gw), "localhost", own["ca_cert"])
    assert cert.serial_number
    bad = tmp_path / "bad.yml"
    bad.write_text("tls:\n  certificate: x\n")
    done = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--config", str(bad), "--state-dir",
                           str(tmp_path / "s2")], capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert done.returncode == 2 and "tls.certificate: unknown setting" in done.stderr
