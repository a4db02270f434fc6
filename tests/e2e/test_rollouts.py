"""Rollouts within a time budget: every failure reason gives the documented state and
message quickly (far below the budget), failed updates roll back with no failed request,
traffic waits for deployments that are not ready, and custom model servers work."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time

import pytest
import yaml
from aiohttp import web

from tests.support.gateway import wait_for
from tests.support.load import SteadyLoad
from tests.support.manifests import ECHO_MODEL, write_deployment, write_endpoint

CUSTOM_SERVER = ECHO_MODEL.parent / "custom" / "server.py"


def apply(gw, folder):
    return gw.cli_json("apply", "-f", str(folder))


def settled(gw, endpoint, name, timeout_s=20):
    """The deployment once its rollout finished (Succeeded or Failed)."""
    return wait_for(lambda: (lambda d: d if d["provisioning_state"] in ("Succeeded", "Failed") else None)(
        gw.deployment(endpoint, name)), timeout_s, f"{endpoint}/{name} to settle")


def one_deployment(tmp_path, endpoint, name="main", **kwargs):
    write_endpoint(tmp_path, endpoint, traffic={name: 100})
    return write_deployment(tmp_path, endpoint, name, **kwargs)


def edit(path, **changes):
    body = yaml.safe_load(path.read_text())
    body.update(changes)
    path.write_text(yaml.safe_dump(body))


def test_a_successful_rollout_records_every_stage(gateway, tmp_path):
    one_deployment(tmp_path, "stages")
    apply(gateway, tmp_path)
    shown = settled(gateway, "stages", "main")
    assert shown["provisioning_state"] == "Succeeded"
    rollout = shown["rollout"]
    assert rollout["state"] == "Succeeded" and rollout["budget"] == "20m0s" and rollout["kind"] == "create"
    assert [s["name"] for s in rollout["stages"]] == ["environment", "model_download", "code_download", "init",
                                                      "readiness"]
    assert all(s["outcome"] == "Succeeded" and s["seconds"] >= 0 for s in rollout["stages"])


@pytest.mark.parametrize("env, stage, reason", [
    ({"INIT_FAIL": "1"}, "init", "init() raised ValueError: bad model"),
    ({"INIT_EXIT": "1"}, "init", "the replica exited 3 times; last: the replica process exited with code 1"),
], ids=["init-raises", "crash-loop"])
def test_init_failures_fail_fast_with_the_reason(gateway, tmp_path, env, stage, reason):
    name = "initfail" if "INIT_FAIL" in env else "crashloop"
    one_deployment(tmp_path, name, env=env)
    started = time.monotonic()
    apply(gateway, tmp_path)
    shown = settled(gateway, name, "main")
    assert time.monotonic() - started < 15  # far below the 20-minute budget
    assert shown["provisioning_state"] == "Failed"
    assert shown["rollout"]["failed_stage"] == stage and shown["rollout"]["reason"] == reason
    logs = gateway.cli("deployment", "logs", "-n", "main", "-e", name)
    assert logs.returncode == 0
    if "INIT_FAIL" in env:
        assert "Traceback" in logs.stdout and "ValueError: bad model" in logs.stdout
    # Nothing serves it: a caller gets a 503 that says why.
    request = tmp_path / "request.json"
    request.write_text("{}")
    call = gateway.cli("endpoint", "invoke", "-n", name, "-r", str(request))
    assert call.returncode == 1 and "HTTP 503" in call.stderr and "not rolled out" in call.stderr


def test_budget_exhaustion_names_the_stage(gateway, tmp_path):
    path = one_deployment(tmp_path, "slowinit", env={"INIT_SLEEP_S": "60"})
    edit(path, rollout_timeout_s=2)
    apply(gateway, tmp_path)
    shown = settled(gateway, "slowinit", "main")
    assert shown["rollout"]["failed_stage"] == "init"
    assert shown["rollout"]["reason"] == "budget of 2s exhausted in stage init"
    wait_for(lambda: not [r for r in gateway.deployment("slowinit", "main")["replicas"]
                          if r["state"] != "exited"], 15, "the slow replica to be stopped")


def test_readiness_probe_failures(gateway, tmp_path):
    write_endpoint(tmp_path, "notready", traffic={"main": 100})
    path = tmp_path / "custom.yml"
    path.write_text(yaml.safe_dump({
        "name": "main", "endpoint_name": "notready",
        "environment": {"command": [sys.executable, str(CUSTOM_SERVER)],
                        "inference_config": {"liveness_route": {"port": 8000, "path": "/healthz"},
                                             "readiness_route": {"port": 8000, "path": "/ready"},
                                             "scoring_route": {"port": 8000, "path": "/predict"}}},
        "environment_variables": {"READY_STATUS": "503"},
        "readiness_probe": {"period": 0.2, "failure_threshold": 3},
    }))
    apply(gateway, tmp_path)
    shown = settled(gateway, "notready", "main")
    assert shown["rollout"]["failed_stage"] == "readiness"
    assert shown["rollout"]["reason"] == "readiness probe failed 3 times (GET /ready answered 503)"


def test_environment_failures(gateway, tmp_path):
    (tmp_path / "big.yml").write_text(yaml.safe_dump({
        "apiVersion": "amlarc.azureml.com/v1alpha1", "kind": "InstanceType", "metadata": {"name": "huge"},
        "spec": {"resources": {"requests": {"cpu": "512"}, "limits": {"cpu": "512", "memory": "1Ti"}}}}))
    write_endpoint(tmp_path, "toobig", traffic={"main": 100})
    path = write_deployment(tmp_path, "toobig", "main")
    edit(path, instance_type="huge")
    apply(gateway, tmp_path)
    shown = settled(gateway, "toobig", "main")
    assert shown["rollout"]["failed_stage"] == "environment"
    assert "instance type huge requests 512 CPUs, this machine has" in shown["rollout"]["reason"]


def test_unknown_instance_type_is_refused_at_apply(gateway, tmp_path):
    write_endpoint(tmp_path, "typo", traffic={"main": 100})
    path = write_deployment(tmp_path, "typo", "main")
    edit(path, instance_type="Standard_NOPE")
    done = gateway.cli("apply", "-f", str(tmp_path))
    assert done.returncode == 2 and "instance_type: no instance type 'Standard_NOPE'" in done.stderr


def test_instance_type_limits_apply_to_the_replica(gateway, tmp_path):
    (tmp_path / "small.yml").write_text(yaml.safe_dump({
        "kind": "InstanceType", "name": "small", "node_selector": {"pool": "cpu"},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "3Gi"}}}))
    write_endpoint(tmp_path, "limited", traffic={"main": 100})
    path = write_deployment(tmp_path, "limited", "main")
    edit(path, instance_type="small")
    apply(gateway, tmp_path)
    shown = settled(gateway, "limited", "main")
    assert shown["provisioning_state"] == "Succeeded", shown["rollout"]
    pid = shown["replicas"][0]["pid"]
    limits = open(f"/proc/{pid}/limits").read()
    assert [line for line in limits.splitlines() if line.startswith("Max address space")][0].split()[3] == str(3 * 1024 ** 3)
    status = open(f"/proc/{pid}/status").read()
    allowed = [line for line in status.splitlines() if line.startswith("Cpus_allowed_list")][0].split()[1]
    assert allowed in ("0", "1")  # pinned to one core
    types = gateway.admin("GET", "/api/v1/instance-types")[1]
    assert {t["name"] for t in types} >= {"small", "defaultinstancetype"}


def test_a_failed_update_rolls_back_and_no_request_fails(gateway, tmp_path):
    one_deployment(tmp_path, "safe", instance_count=2, env={"SLEEP_S": "0.01"})
    apply(gateway, tmp_path)
    assert settled(gateway, "safe", "main")["provisioning_state"] == "Succeeded"
    old_pids = {r["pid"] for r in gateway.deployment("safe", "main")["replicas"]}

    async def scenario():
        key = gateway.keys("safe")[0]
        load = SteadyLoad(gateway.info.ca_cert, f"{gateway.scoring_url}/api/v1/endpoint/safe/score",
                          {"Authorization": f"Bearer {key}"}, rate=40).start()
        await asyncio.sleep(1.0)
        write_deployment(tmp_path, "safe", "main", instance_count=2, env={"SLEEP_S": "0.01", "INIT_FAIL": "1"})
        await asyncio.to_thread(apply, gateway, tmp_path)
        shown = await asyncio.to_thread(settled, gateway, "safe", "main")
        await asyncio.sleep(1.0)
        return shown, await load.stop()

    shown, result = asyncio.run(scenario())
    assert shown["provisioning_state"] == "Failed"
    assert shown["rollout"]["kind"] == "update" and shown["rollout"]["rolled_back"] is True
    assert result.sent > 60 and result.failed == 0, (result.statuses, result.errors)
    ready = [r for r in gateway.deployment("safe", "main")["replicas"] if r["state"] == "ready"]
    assert {r["pid"] for r in ready} == old_pids  # the old version still serves


def test_traffic_waits_for_a_deployment_still_rolling_out(gateway, tmp_path):
    write_endpoint(tmp_path, "waits", traffic={"old": 100})
    write_deployment(tmp_path, "waits", "old")
    apply(gateway, tmp_path)
    assert settled(gateway, "waits", "old")["provisioning_state"] == "Succeeded"
    # One apply: a new deployment whose init() takes 3 s, and all traffic moved to it.
    write_endpoint(tmp_path, "waits", traffic={"old": 0, "new": 100})
    write_deployment(tmp_path, "waits", "new", env={"INIT_SLEEP_S": "3"})
    apply(gateway, tmp_path)
    answer = gateway.cli_json("endpoint", "invoke", "-n", "waits", "-r", str(write_request(tmp_path)))
    assert answer["label"] == "old"  # the old deployment still gets the traffic
    settled(gateway, "waits", "new")
    wait_for(lambda: gateway.cli_json("endpoint", "invoke", "-n", "waits", "-r",
                                      str(write_request(tmp_path)))["label"] == "new", 10, "traffic to move")


def test_traffic_to_a_failed_deployment_is_refused(gateway, tmp_path):
    write_endpoint(tmp_path, "refuse", traffic={"good": 100})
    write_deployment(tmp_path, "refuse", "good")
    write_deployment(tmp_path, "refuse", "bad", env={"INIT_FAIL": "1"})
    apply(gateway, tmp_path)
    assert settled(gateway, "refuse", "bad")["provisioning_state"] == "Failed"
    # A request pinned to it is told why it has no replica (not only that none is ready).
    status, error = wait_for(lambda: (lambda s, e: (s, e) if "failed to roll out" in e.get("message", "") else None)(
        *scoring_answer(gateway, "refuse", {"azureml-model-deployment": "bad"})), 10, "the reason in the 503")
    assert status == 503 and error["code"] == "NoReadyReplica"
    assert "deployment 'bad' has no ready replica: it failed to roll out in stage init " \
        "(init() raised ValueError: bad model); apply a fixed version" == error["message"]
    (tmp_path / "refuse-bad-deployment.yml").unlink()
    (tmp_path / "refuse-good-deployment.yml").unlink()
    write_endpoint(tmp_path, "refuse", traffic={"good": 50, "bad": 50})
    done = gateway.cli("apply", "-f", str(tmp_path))
    assert done.returncode == 2
    assert "traffic.bad: deployment 'bad' failed to roll out in stage init (init() raised ValueError: bad model)" \
        in done.stderr


def test_an_endpoint_yaml_without_traffic_keeps_the_split(gateway, tmp_path):
    """QA's repro: a split set with `endpoint update`, then `name` + `auth_mode` applied
    again; the split was wiped and every unpinned request got 404 NoDeploymentWithTraffic."""
    write_endpoint(tmp_path, "keeps")
    for name in ("d1", "d2"):
        write_deployment(tmp_path, "keeps", name)
    apply(gateway, tmp_path)
    for name in ("d1", "d2"):
        assert settled(gateway, "keeps", name)["provisioning_state"] == "Succeeded"
    gateway.cli_json("endpoint", "update", "-n", "keeps", "--traffic", "d1=100", "--mirror-traffic", "d2=10")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "ep.yml").write_text("name: keeps\nauth_mode: key\ndescription: first\ntags: {team: a}\n"
                                 "rate_limit: {requests_per_second: 50}\n")
    apply(gateway, bare)
    shown = gateway.cli_json("endpoint", "show", "-n", "keeps")
    assert shown["traffic"] == {"d1": 100} and shown["mirror_traffic"] == {"d2": 10}
    assert (shown["description"], shown["tags"]) == ("first", {"team": "a"})
    assert shown["rate_limit"]["requests_per_second"] == 50
    # What only the YAML sets is what it says (README): left out, none; the splits stay.
    (bare / "ep.yml").write_text("name: keeps\nauth_mode: key\n")
    apply(gateway, bare)
    shown = gateway.cli_json("endpoint", "show", "-n", "keeps")
    assert shown["traffic"] == {"d1": 100} and shown["mirror_traffic"] == {"d2": 10}
    assert (shown["description"], shown["tags"], shown["rate_limit"]) == ("", {}, None)
    answer = gateway.cli_json("endpoint", "invoke", "-n", "keeps", "-r", str(write_request(tmp_path)))
    assert answer["label"] == "d1"


def scoring_status(gateway, endpoint: str, credential: str) -> int:
    """The HTTP status of one scoring call with `Authorization: Bearer credential`."""
    import ssl
    import urllib.request

    request = urllib.request.Request(f"{gateway.scoring_url}/api/v1/endpoint/{endpoint}/score", data=b"{}",
                                     headers={"Authorization": f"Bearer {credential}"})
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=gateway.info.ca_cert),
                                    timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def scoring_answer(gateway, endpoint: str, headers: dict) -> tuple[int, dict]:
    """(status, JSON body) of one scoring call with the endpoint's key and `headers`."""
    import ssl
    import urllib.request

    key = gateway.cli_json("endpoint", "get-credentials", "-n", endpoint)["primaryKey"]
    request = urllib.request.Request(f"{gateway.scoring_url}/api/v1/endpoint/{endpoint}/score", data=b"{}",
                                     headers={"Authorization": f"Bearer {key}", **headers})
    try:
        with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=gateway.info.ca_cert),
                                    timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def write_request(folder):
    path = folder / "request.json"
    path.write_text('{"data": 1}')
    return path


def test_a_custom_model_server_with_its_own_routes(gateway, tmp_path):
    write_endpoint(tmp_path, "custom", traffic={"main": 100})
    (tmp_path / "custom.yml").write_text(yaml.safe_dump({
        "name": "main", "endpoint_name": "custom",
        "environment": {"command": f"{sys.executable} {CUSTOM_SERVER} {{port}}",
                        "inference_config": {"liveness_route": {"port": 8000, "path": "/healthz"},
                                             "readiness_route": {"port": 8000, "path": "/ready"},
                                             "scoring_route": {"port": 8000, "path": "/predict"}}},
    }))
    apply(gateway, tmp_path)
    assert settled(gateway, "custom", "main")["provisioning_state"] == "Succeeded"
    answer = gateway.cli_json("endpoint", "invoke", "-n", "custom", "-r", str(write_request(tmp_path)))
    assert answer == {"custom": True, "echo": {"data": 1}, "path": "/predict"}


def test_keys_regenerate_one_at_a_time(gateway, tmp_path):
    one_deployment(tmp_path, "keys")
    apply(gateway, tmp_path)
    settled(gateway, "keys", "main")
    primary, secondary = gateway.keys("keys")
    regenerated = gateway.cli_json("endpoint", "regenerate-keys", "-n", "keys", "--key-type", "secondary")
    assert regenerated["primaryKey"] == primary and regenerated["secondaryKey"] != secondary

    def status_with(key):
        return scoring_status(gateway, "keys", key)

    assert status_with(primary) == 200
    assert status_with(regenerated["secondaryKey"]) == 200
    assert status_with(secondary) == 401


def test_aml_token_auth_and_expiry(gateway, tmp_path):
    write_endpoint(tmp_path, "tokened", traffic={"main": 100}, auth_mode="aml_token")
    write_deployment(tmp_path, "tokened", "main")
    write_endpoint(tmp_path, "other", traffic={"main": 100}, auth_mode="aml_token")
    write_deployment(tmp_path, "other", "main")
    apply(gateway, tmp_path)
    settled(gateway, "tokened", "main")
    settled(gateway, "other", "main")
    token = gateway.cli_json("endpoint", "get-token", "-n", "tokened")
    assert token["tokenType"] == "Bearer" and token["expiryTimeUtc"] > time.time() + 3000
    short = gateway.cli_json("endpoint", "get-token", "-n", "tokened", "--lifetime", "2s")
    foreign = gateway.cli_json("endpoint", "get-token", "-n", "other")

    def status_with(value):
        return scoring_status(gateway, "tokened", value)

    assert status_with(token["accessToken"]) == 200
    assert status_with(short["accessToken"]) == 200
    assert status_with(foreign["accessToken"]) == 401  # issued for another endpoint
    assert status_with(token["accessToken"][:-2] + "xx") == 401
    assert status_with(gateway.keys("tokened")[0]) == 401  # keys do not open a token endpoint
    # get-credentials gives what opens the endpoint, as az ml's does: a token here, for an hour.
    credentials = gateway.cli_json("endpoint", "get-credentials", "-n", "tokened")
    assert set(credentials) == {"accessToken", "tokenType", "expiryTimeUtc", "refreshAfterTimeUtc"}
    assert 3500 < credentials["expiryTimeUtc"] - time.time() <= 3600
    assert status_with(credentials["accessToken"]) == 200
    wait_for(lambda: time.time() >= short["expiryTimeUtc"], 5, "the short token's expiry")  # not a fixed 2.5 s
    assert status_with(short["accessToken"]) == 401  # expired
    assert gateway.cli_json("endpoint", "invoke", "-n", "tokened", "-r", str(write_request(tmp_path)))["label"] == "main"
    key_mode = gateway.cli("endpoint", "get-token", "-n", "other-missing")
    assert key_mode.returncode != 0


def test_cli_errors_are_one_line_with_exit_codes(gateway, tmp_path):
    missing = gateway.cli("deployment", "show", "-n", "nope", "-e", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    bad = gateway.cli("apply", "-f", str(tmp_path / "nothing.yml"))
    assert bad.returncode == 2 and "no such file" in bad.stderr
    scale = gateway.cli("deployment", "scale", "-n", "main", "-e", "stages", "--instance-count", "99")
    assert scale.returncode == 2 and "instance_count" in scale.stderr


@pytest.fixture
def model_server():
    """A model file served over HTTP on 127.0.0.1, reached directly or through a proxy."""
    content = json.dumps({"weights": [1, 2, 3]}).encode()
    seen: list[str] = []

    async def model(request):
        seen.append(str(request.url))
        if request.path.endswith("/model.json"):
            return web.Response(body=content)
        return web.Response(status=404)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", model)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    import threading
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port, content, seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_model_download_checks_and_proxy(make_gateway, tmp_path, model_server):
    port, content, seen = model_server
    good_sha = hashlib.sha256(content).hexdigest()
    # The gateway reaches "models.example.test" only through its HTTP proxy: our server.
    gw = make_gateway(env={"HTTP_PROXY": f"http://127.0.0.1:{port}", "NO_PROXY": "127.0.0.1,localhost"})
    for name, url, sha in (("fetched", "http://models.example.test/m/model.json", good_sha),
                           ("badsum", "http://models.example.test/m/model.json", "0" * 64),
                           ("missing", "http://models.example.test/m/absent.json", None)):
        folder = tmp_path / name
        folder.mkdir()
        write_endpoint(folder, name, traffic={"main": 100})
        path = write_deployment(folder, name, "main")
        edit(path, model={"path": url, **({"sha256": sha} if sha else {})})
        gw.cli_json("apply", "-f", str(folder))
    fetched = settled(gw, "fetched", "main")
    assert fetched["provisioning_state"] == "Succeeded", fetched["rollout"]
    assert any("models.example.test" in url for url in seen)  # it went through the proxy
    badsum = settled(gw, "badsum", "main")
    assert badsum["rollout"]["failed_stage"] == "model_download"
    assert f"sha256 mismatch for http://models.example.test/m/model.json: expected {'0' * 64}, got {good_sha}" \
        == badsum["rollout"]["reason"]
    missing = settled(gw, "missing", "main")
    assert missing["rollout"]["reason"] == "GET http://models.example.test/m/absent.json answered 404"


def test_deleting_is_shown_while_replicas_drain(gateway, tmp_path):
    write_endpoint(tmp_path, "goner", traffic={"main": 100}, auth_mode="none")
    write_deployment(tmp_path, "goner", "main", env={"SLEEP_S": "3"})
    apply(gateway, tmp_path)
    settled(gateway, "goner", "main")
    import threading
    import urllib.request
    import ssl

    def slow_call():
        request = urllib.request.Request(f"{gateway.scoring_url}/api/v1/endpoint/goner/score", data=b"{}")
        try:
            urllib.request.urlopen(request, context=ssl.create_default_context(cafile=gateway.info.ca_cert),
                                   timeout=20).read()
        except OSError:
            pass

    caller = threading.Thread(target=slow_call)
    caller.start()
    # the request is at the model: the replica must drain before it stops
    wait_for(lambda: gateway.metric("scoregate_deployment_in_flight_requests", endpoint="goner") == 1, 20,
             "the request at the model")
    deleting = threading.Thread(target=gateway.cli, args=("endpoint", "delete", "-n", "goner"))
    deleting.start()
    shown = wait_for(lambda: (lambda s: s if s[0] == 200 and s[1]["provisioning_state"] == "Deleting" else None)(
        gateway.admin("GET", "/api/v1/endpoints/goner/deployments/main")), 5, "Deleting to show")
    assert shown[1]["replicas"]
    deleting.join(30)
    caller.join(30)
    assert gateway.admin("GET", "/api/v1/endpoints/goner/deployments/main")[0] == 404


def test_apply_wait_reports_each_deployment_and_fails_with_them(gateway, tmp_path):
    def apply_wait(*extra):
        done = gateway.cli("apply", "-f", str(tmp_path), "--wait", *extra)
        return done.returncode, json.loads(done.stdout), done.stderr

    write_endpoint(tmp_path, "waiter", traffic={"good": 100})
    write_deployment(tmp_path, "waiter", "good")
    bad = write_deployment(tmp_path, "waiter", "bad", env={"INIT_FAIL": "1"})
    code, shown, stderr = apply_wait()
    outcomes = {o["name"]: o for o in shown["deployments"]}
    assert code == 1 and "waiter/bad: Failed at init: " in stderr and "ValueError: bad model" in stderr
    assert (outcomes["good"]["provisioning_state"], outcomes["good"]["ready_replicas"]) == ("Succeeded", 1)
    assert (outcomes["bad"]["provisioning_state"], outcomes["bad"]["failed_stage"]) == ("Failed", "init")
    assert {a["kind"] for a in shown["applied"]} == {"endpoint", "deployment"}  # what apply says, kept

    # Fixed: the new version is waited for, not the failed one before it.
    write_deployment(tmp_path, "waiter", "bad", env={"INIT_SLEEP_S": "1"})
    code, shown, stderr = apply_wait()
    outcomes = {o["name"]: o for o in shown["deployments"]}
    assert code == 0, stderr
    assert outcomes["bad"]["provisioning_state"] == "Succeeded" and outcomes["bad"]["ready_replicas"] == 1
    assert outcomes["bad"]["version"] == gateway.deployment("waiter", "bad")["version"]
    # A changed version is an update, not a new attempt of the failed one (that is only the
    # same YAML applied again: test_an_unchanged_apply_tries_a_failed_deployment_again).
    [fixed] = [a for a in shown["applied"] if a["name"] == "bad"]
    assert "new_attempt" not in fixed and "message" not in fixed, fixed

    # A failed update: rolled back, and the command says so.
    write_deployment(tmp_path, "waiter", "good", env={"INIT_FAIL": "1"})
    code, shown, stderr = apply_wait()
    outcomes = {o["name"]: o for o in shown["deployments"]}
    assert code == 1 and "waiter/good: Failed at init" in stderr
    assert outcomes["good"]["rolled_back"] is True and outcomes["bad"]["provisioning_state"] == "Succeeded"

    # Bounded: a rollout that takes longer than --wait-timeout ends the command, naming it,
    # with exit 4 (the rollout goes on), not 1 (a failure), as `batch invoke --wait`.
    write_deployment(tmp_path, "waiter", "good", env={"INIT_SLEEP_S": "30"})
    bad.unlink()
    started = time.monotonic()
    code, shown, stderr = apply_wait("--wait-timeout", "1")
    assert code == 4 and "waiter/good: not settled after 1 s" in stderr
    assert time.monotonic() - started < 15
    assert [o["name"] for o in shown["deployments"]] == ["good"] and shown["deployments"][0]["timed_out"] is True


def test_endpoint_update_shifts_traffic_through_the_same_checks_as_yaml(gateway, tmp_path):
    write_endpoint(tmp_path, "shifty", traffic={"aa": 100})
    write_deployment(tmp_path, "shifty", "aa")
    write_deployment(tmp_path, "shifty", "bb")
    assert gateway.cli("apply", "-f", str(tmp_path), "--wait").returncode == 0
    request = write_request(tmp_path)

    def labels(count=6):
        return {gateway.cli_json("endpoint", "invoke", "-n", "shifty", "-r", str(request))["label"]
                for _ in range(count)}

    assert labels() == {"aa"}
    shown = gateway.cli_json("endpoint", "update", "-n", "shifty", "--traffic", "bb=100")
    assert shown["traffic"] == {"bb": 100} and labels() == {"bb"}
    shown = gateway.cli_json("endpoint", "update", "-n", "shifty", "--mirror-traffic", "aa=20")
    assert (shown["traffic"], shown["mirror_traffic"]) == ({"bb": 100}, {"aa": 20})
    for args, message in ((("--traffic", "aa=50 bb=40"), "weights must add up to 100"),
                          (("--traffic", "bb=90 aa=10"), "cannot get both live and mirrored traffic"),
                          (("--traffic", "cc=100"), "has no deployment 'cc'"),
                          (("--traffic", "aa"), 'expected "name=percent ...", got \'aa\''),
                          ((), "nothing to update")):
        refused = gateway.cli("endpoint", "update", "-n", "shifty", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
    # Nothing of a refused update was written; the other fields were kept by the ones that were.
    shown = gateway.cli_json("endpoint", "show", "-n", "shifty")
    assert (shown["traffic"], shown["mirror_traffic"], shown["auth_mode"]) == ({"bb": 100}, {"aa": 20}, "key")
    assert gateway.cli_json("endpoint", "update", "-n", "shifty", "--mirror-traffic", "")["mirror_traffic"] == {}


def test_invoke_shows_the_models_own_error_body(gateway, tmp_path):
    """A model's non-2xx answer is a 424 with its body kept; `endpoint invoke` printed
    "scoring failed with HTTP 424: None" when that body had no "message" field."""
    write_endpoint(tmp_path, "modelerr", traffic={"main": 100})
    (tmp_path / "modelerr.yml").write_text(yaml.safe_dump({
        "name": "main", "endpoint_name": "modelerr",  # scored at /score, a route it does not have
        "environment": {"command": f"{sys.executable} {CUSTOM_SERVER} {{port}}",
                        "inference_config": {"liveness_route": {"port": 8000, "path": "/healthz"},
                                             "readiness_route": {"port": 8000, "path": "/ready"}}},
    }))
    apply(gateway, tmp_path)
    assert settled(gateway, "modelerr", "main")["provisioning_state"] == "Succeeded"
    call = gateway.cli("endpoint", "invoke", "-n", "modelerr", "-r", str(write_request(tmp_path)))
    assert call.returncode == 1
    assert call.stderr.strip() == 'error: scoring failed with HTTP 424: {"error": "no route"}'


@pytest.fixture
def flaky_model_server():
    """A model file served over HTTP that answers 503 until `state["up"]`: the cause of a
    failed rollout that lies outside the YAML (a model store that was down)."""
    state = {"up": False}

    async def model(_request):
        return web.Response(body=b'{"weights": [1]}') if state["up"] else web.Response(status=503)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", model)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    import threading
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield runner.addresses[0][1], state
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_an_unchanged_apply_tries_a_failed_deployment_again(make_gateway, tmp_path, flaky_model_server):
    """As `az ml online-deployment update -f same.yml` on a Failed deployment: the same YAML
    applied again after the cause was removed is a new attempt, and it serves. Neither the
    controller nor a restart of the gateway tries it again by itself."""
    port, server = flaky_model_server
    gw = make_gateway()
    folder = tmp_path / "yaml"
    folder.mkdir()
    path = one_deployment(folder, "retry")
    edit(path, model={"path": f"http://127.0.0.1:{port}/m/model.json"})
    first = apply(gw, folder)
    assert not [a for a in first["applied"] if a.get("new_attempt")]
    failed = settled(gw, "retry", "main")
    assert (failed["provisioning_state"], failed["rollout"]["failed_stage"]) == ("Failed", "model_download")

    server["up"] = True  # fixed outside the YAML
    time.sleep(3)  # three reconcile passes
    assert gw.deployment("retry", "main")["rollout"] == failed["rollout"]
    gw.stop()
    gw = make_gateway()  # the same state dir: the verdict is kept, not retried
    time.sleep(2)
    shown = gw.deployment("retry", "main")
    assert shown["provisioning_state"] == "Failed" and shown["rollout"]["started_at"] == failed["rollout"]["started_at"]

    done = gw.cli("apply", "-f", str(folder), "--wait", "--wait-timeout", "30")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    [retried] = [a for a in answer["applied"] if a["kind"] == "deployment"]
    assert retried["new_attempt"] is True and retried["message"] == "its last rollout failed: a new attempt starts"
    [outcome] = answer["deployments"]
    assert (outcome["provisioning_state"], outcome["ready_replicas"]) == ("Succeeded", 1)
    shown = gw.deployment("retry", "main")
    assert shown["version"] == failed["version"]  # the same version, tried again
    assert shown["rollout"]["attempt"] == retried["attempt"]
    assert [s["name"] for s in shown["rollout"]["stages"]] == ["environment", "model_download", "code_download",
                                                               "init", "readiness"]
    request = write_request(tmp_path)
    assert gw.cli_json("endpoint", "invoke", "-n", "retry", "-r", str(request))["label"] == "main"


def test_an_unchanged_apply_of_a_healthy_deployment_changes_nothing(gateway, tmp_path):
    one_deployment(tmp_path, "steady")
    apply(gateway, tmp_path)
    before = settled(gateway, "steady", "main")
    assert before["provisioning_state"] == "Succeeded"
    answer = apply(gateway, tmp_path)
    assert not [a for a in answer["applied"] if a.get("new_attempt")]
    time.sleep(2)  # two reconcile passes
    after = gateway.deployment("steady", "main")
    assert after["provisioning_state"] == "Succeeded"
    assert [r["pid"] for r in after["replicas"]] == [r["pid"] for r in before["replicas"]]
    assert after["rollout"]["started_at"] == before["rollout"]["started_at"]
