"""Targets and the gateway's admin API as loadtests sees it (no gateway needed)."""

import json

import pytest

from loadtests.admin import Gateway, GatewayError, GatewayNotRunning, main_deployment
from loadtests.cli import build_parser, run_cli, spec_from_args
from loadtests.scenarios.deployments import deployment_body, snapshot
from loadtests.targets import merge_headers, parse_replica, replica_url, resolve

VIEW = {
    "name": "blue", "endpoint_name": "iris", "provisioning_state": "Succeeded",
    "instance_type": "defaultinstancetype", "instance_count": 2, "ready_replicas": 1,
    "model": "/models/iris", "code_configuration": {"code": "/code", "scoring_script": "score.py"},
    "environment": {}, "environment_variables": {"A": "1"},
    "request_settings": {"request_timeout_ms": 5000}, "scale_settings": {"type": "default"},
    "liveness_probe": {"period": 10}, "readiness_probe": {"period": 10},
    "replicas": [{"replica_id": "blue-1", "state": "starting", "port": 4001, "pid": 11},
                 {"replica_id": "blue-2", "state": "ready", "port": 4002, "pid": 12}],
    "desired_replicas": 2, "in_flight_requests": 0,
}


def write_gateway_json(folder, **over):
    data = {"admin_url": "http://127.0.0.1:1/", "admin_token": "t",
            "scoring_url": "https://127.0.0.1:2", "ca_cert": "/ca.pem", "pid": 5, **over}
    (folder / "gateway.json").write_text(json.dumps(data))


def test_parse_replica():
    assert parse_replica("iris/blue") == ("iris", "blue")
    for bad in ("iris", "iris/", "/blue", "a/b/c"):
        with pytest.raises(ValueError):
            parse_replica(bad)


def test_gateway_from_state_dir(tmp_path, monkeypatch):
    with pytest.raises(GatewayNotRunning) as exc:
        Gateway.from_state_dir(tmp_path)
    assert exc.value.exit_code == 3 and "scoregate serve" in str(exc.value)
    write_gateway_json(tmp_path)
    gw = Gateway.from_state_dir(tmp_path)
    assert gw.admin_url == "http://127.0.0.1:1" and gw.is_local and gw.pid == 5
    monkeypatch.setenv("SCOREGATE_STATE_DIR", str(tmp_path))
    assert Gateway.from_state_dir(None).state_dir == str(tmp_path.resolve())
    (tmp_path / "gateway.json").write_text("{")
    with pytest.raises(GatewayError, match="cannot read"):
        Gateway.from_state_dir(tmp_path)


def test_an_unreachable_admin_api_is_reported(tmp_path):
    write_gateway_json(tmp_path)
    with pytest.raises(GatewayNotRunning, match="does not answer"):
        Gateway.from_state_dir(tmp_path).endpoint("iris")


def test_replica_url_uses_the_first_ready_replica():
    assert replica_url(VIEW) == "http://127.0.0.1:4002/score"
    with pytest.raises(GatewayError, match="no ready replica"):
        replica_url({**VIEW, "replicas": VIEW["replicas"][:1]})


def test_resolve_needs_exactly_one_target():
    assert resolve(url="http://x/").url == "http://x/"
    with pytest.raises(ValueError):
        resolve()
    with pytest.raises(ValueError):
        resolve(url="http://x/", endpoint="e")


def test_user_headers_override_target_headers():
    base = (("Content-Type", "application/json"), ("Authorization", "Bearer k"))
    merged = merge_headers(base, (("authorization", "Bearer other"),))
    assert merged == (("Content-Type", "application/json"), ("authorization", "Bearer other"))


def test_main_deployment_is_the_one_with_most_traffic():
    assert main_deployment({"traffic": {"blue": 10, "green": 90}, "deployments": ["blue"]}) == "green"
    assert main_deployment({"traffic": {}, "deployments": ["x", "y"]}) == "x"
    with pytest.raises(GatewayError):
        main_deployment({"name": "e", "traffic": {}, "deployments": []})


def test_a_shown_deployment_becomes_an_applicable_body():
    body = deployment_body(VIEW, {"B": "2"})
    assert body["environment_variables"] == {"A": "1", "B": "2"}
    assert body["model"] == {"path": "/models/iris"}
    assert body["code_configuration"] == VIEW["code_configuration"]
    assert "environment" not in body  # empty: left out
    for api_only in ("replicas", "provisioning_state", "ready_replicas", "desired_replicas",
                     "in_flight_requests"):
        assert api_only not in body
    assert VIEW["environment_variables"] == {"A": "1"}  # the view is not modified


def test_snapshot_counts():
    snap = snapshot(VIEW)
    assert (snap["ready"], snap["live"], snap["desired"]) == (1, 2, 2)
    assert snap["ready_pids"] == [12] and snap["live_ids"] == ["blue-1", "blue-2"]


def test_cli_targets_are_mutually_exclusive(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["run", "--url", "http://x/", "--endpoint", "e", "--rate", "1", "--duration", "1"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_url_target_defaults_to_get_and_keeps_cafile():
    args = build_parser().parse_args(["run", "--url", "https://127.0.0.1:1/", "--cafile", "c.pem",
                                      "--rate", "1", "--duration", "1"])
    spec = spec_from_args(args)
    assert spec.target.method == "GET" and spec.target.cafile == "c.pem"


@pytest.fixture
def admin_404(tmp_path):
    """A state dir whose admin API answers every call 404 with the gateway's message."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            parts = self.path.split("/")  # /api/v1/endpoints/E[/deployments/D]
            message = (f"no deployment '{parts[6]}' on endpoint '{parts[4]}'"
                       if len(parts) > 6 else f"no endpoint '{parts[4]}'")
            body = json.dumps({"message": message}).encode()
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    write_gateway_json(tmp_path, admin_url=f"http://127.0.0.1:{server.server_port}")
    yield tmp_path
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where,message", [
    (["--endpoint", "nope"], "no endpoint 'nope'"),
    (["--replica", "iris/nope"], "no deployment 'nope' on endpoint 'iris'"),
])
def test_an_unknown_endpoint_or_deployment_is_a_usage_error(admin_404, where, message, capsys):
    code = run_cli(["run", *where, "--state-dir", str(admin_404), "--rate", "1",
                    "--duration", "1", "-q", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip() == f"loadtests: error: {message}"


def test_a_malformed_replica_is_a_usage_error(tmp_path, capsys):
    write_gateway_json(tmp_path)
    code = run_cli(["run", "--replica", "iris", "--state-dir", str(tmp_path), "--rate", "1",
                    "--duration", "1", "-q", "--no-plots"])
    assert code == 2 and "ENDPOINT/DEPLOYMENT" in capsys.readouterr().err
