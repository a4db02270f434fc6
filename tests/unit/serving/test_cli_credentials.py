"""`scoregate endpoint get-credentials` by the endpoint's auth_mode, against a stand-in
admin API on 127.0.0.1 (the verb's own logic: which call, what it prints, its exit code)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.cli import main
from serving.statedir import GatewayInfo, StateDir

KEYS = {"primaryKey": "p" * 43, "secondaryKey": "s" * 43}
ENDPOINTS = {"keyed": "key", "open": "none", "tokened": "aml_token"}


class _Admin(BaseHTTPRequestHandler):
    calls: list[tuple[str, str]] = []

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.calls.append(("GET", self.path))
        parts = self.path.split("/")  # /api/v1/endpoints/NAME[/keys]
        name = parts[4] if len(parts) > 4 else ""
        if name not in ENDPOINTS:
            self._answer(404, {"code": "NotFound", "message": f"no endpoint '{name}'", "request_id": "r"})
        elif len(parts) == 6 and parts[5] == "keys":
            self._answer(200, KEYS)  # the admin API keeps an endpoint's keys whatever its auth_mode
        else:
            self._answer(200, {"name": name, "kind": "online", "auth_mode": ENDPOINTS[name]})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def state_dir(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Admin.calls = []
    StateDir(tmp_path).write_gateway(GatewayInfo(
        admin_url=f"http://127.0.0.1:{server.server_address[1]}", admin_token="t",
        scoring_url="https://127.0.0.1:1", ca_cert="/nowhere/ca.pem", pid=1))
    yield tmp_path
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_key_endpoint_gives_its_keys(state_dir, capsys):
    assert main(["endpoint", "get-credentials", "--name", "keyed", "--state-dir", str(state_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == KEYS


def test_an_endpoint_without_auth_has_no_credentials_to_give(state_dir, capsys):
    """auth_mode none checks no key: printing keys would tell the caller to send one that
    nothing checks. The verb says so and fails, as get-token does on a key endpoint."""
    assert main(["endpoint", "get-credentials", "--name", "open", "--state-dir", str(state_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "auth_mode none" in err and "takes no credentials" in err and "without an Authorization header" in err
    assert ("GET", "/api/v1/endpoints/open/keys") not in _Admin.calls


@pytest.mark.parametrize("name, mode", [("open", "none"), ("tokened", "aml_token")])
def test_keys_that_open_nothing_are_not_regenerated(state_dir, capsys, name, mode):
    """New keys of an endpoint that keys do not open would be printed as if they protected
    it: refused (exit 2) before any change is asked for."""
    assert main(["endpoint", "regenerate-keys", "--name", name, "--state-dir", str(state_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"auth_mode {mode}" in err and "keys do not open it" in err
    assert [call for call in _Admin.calls if call[0] != "GET"] == []
