"""The ports aiohttp serves on a real gateway — admin, HTTP→HTTPS redirect, and the
batch routes on the scoring port — answer like the scoring port: malformed requests
get a JSON 400 naming the request and leave no traceback in the log, no answer names
the server's versions, and every listener's address is told."""

from __future__ import annotations

import json
import re
import socket
import ssl
from urllib.parse import urlsplit

import pytest

from tests.support.gateway import GatewayProcess, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    redirect_port = free_port()
    gw = GatewayProcess(tmp_path_factory.mktemp("gw") / "state",
                        extra_args=["--http-redirect-port", str(redirect_port), "--admin-host", "0.0.0.0"]).start()
    gw.redirect_port = redirect_port
    try:
        yield gw
    finally:
        gw.kill_everything()


def raw(port: int, data: bytes, *, tls_ca: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as is; (status, headers with lowercase names, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        if tls_ca:
            conn = ssl.create_default_context(cafile=tls_ca).wrap_socket(conn, server_hostname="127.0.0.1")
        conn.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def _length(answer: bytes) -> int:
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer)
    return int(found.group(1)) if found else 0


def admin_port(gw) -> int:
    return urlsplit(gw.info.admin_url).port


MALFORMED = {
    "no host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two lengths": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "negative length": b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
}


@pytest.mark.parametrize("port_name", ["redirect", "admin"])
@pytest.mark.parametrize("request_name", sorted(MALFORMED))
def test_a_malformed_request_is_a_json_400_without_a_traceback(gateway, port_name, request_name):
    port = gateway.redirect_port if port_name == "redirect" else admin_port(gateway)
    status, headers, body = raw(port, MALFORMED[request_name])
    assert status == 400, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert error["code"] == "BadRequest" and error["message"].startswith("malformed request: ")
    assert error["request_id"] == headers["x-request-id"]
    assert "\n" not in error["message"] and "b'" not in error["message"]  # aiohttp's quote of the bytes
    assert headers.get("connection", "close") == "close"
    log = gateway.log()
    assert "Error handling request" not in log and "Traceback" not in log and "BadHttpMessage" not in log


def test_no_answer_names_the_server_version(gateway):
    answers = {
        "admin": raw(admin_port(gateway), b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        "redirect": raw(gateway.redirect_port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        "batch route": raw(urlsplit(gateway.scoring_url).port,
                           b"GET /api/v1/batch/x/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                           tls_ca=gateway.info.ca_cert),
        "admin refusal": raw(admin_port(gateway), MALFORMED["two lengths"]),
        "redirect refusal": raw(gateway.redirect_port, MALFORMED["no host"]),
    }
    assert answers["admin"][0] == 200 and answers["redirect"][0] == 308 and answers["batch route"][0] == 404
    for name, (_, headers, _) in answers.items():
        assert "server" not in headers, (name, headers)  # as on the scoring port's own answers
    assert "server" not in raw(urlsplit(gateway.scoring_url).port, b"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Connection: close\r\n\r\n", tls_ca=gateway.info.ca_cert)[1]


@pytest.mark.parametrize("target", ["/%0d%0aX", "/a%0Ab", "*", "/%00"])
def test_the_redirect_port_answers_308_to_every_well_formed_request(gateway, target):
    status, headers, _ = raw(gateway.redirect_port, b"OPTIONS %s HTTP/1.1\r\nHost: localhost\r\n\r\n"
                             % target.encode())
    assert status == 308, headers
    location = headers["location"]
    assert location.startswith("https://localhost:") and "\r" not in location and "\n" not in location
    assert location.endswith(target if target.startswith("/") else "/")


def test_the_redirect_goes_only_to_the_gateway_s_own_names(gateway):
    """The certificate's names (here the development one's: localhost, 127.0.0.1, ::1)
    are kept; another Host is refused, never reflected into a Location (open redirect)."""
    https_port = urlsplit(gateway.scoring_url).port
    for host, location in ((b"127.0.0.1:80", f"https://127.0.0.1:{https_port}/x?y=1"),
                           (b"[::1]", f"https://[::1]:{https_port}/x?y=1")):
        status, headers, _ = raw(gateway.redirect_port, b"GET /x?y=1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert (status, headers["location"]) == (308, location)
    status, headers, body = raw(gateway.redirect_port, b"GET /x HTTP/1.1\r\nHost: evil.test\r\n\r\n")
    assert status == 400 and "location" not in headers
    assert json.loads(body)["code"] == "BadRequest" and json.loads(body)["request_id"] == headers["x-request-id"]


def test_the_admin_bind_address_is_told_and_an_exposed_one_warned_about(gateway):
    port = admin_port(gateway)
    log = wait_for(lambda: "serving on" in gateway.log() and gateway.log(), 10, "the serving line")
    assert f"admin http://0.0.0.0:{port}" in log
    warnings = [line for line in log.splitlines() if "WARNING" in line and "admin" in line]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "/metrics" in warnings[0], log


def test_the_redirect_listener_is_told(gateway):
    port = gateway.redirect_port
    assert f"http://127.0.0.1:{port}" in gateway.log()
    assert json.loads(gateway.state.gateway_file.read_bytes())["redirect_url"] == f"http://127.0.0.1:{port}"
    assert gateway.state.read_gateway().redirect_url == f"http://127.0.0.1:{port}"
