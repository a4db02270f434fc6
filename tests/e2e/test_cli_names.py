"""A name given to the CLI names one resource, never another: names that break the name
rule are refused before any request (exit 2), and the admin API takes a percent-encoded
segment as one name (404 when unknown), never as a path to a different resource."""

from __future__ import annotations

import pytest

from serving.cli import main
from tests.support.gateway import GatewayProcess
from tests.support.manifests import write_deployment, write_endpoint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """ep1 with d1 (all the traffic) and e5 (none)."""
    folder = tmp_path_factory.mktemp("names")
    write_endpoint(folder, "ep1", traffic={"d1": 100})
    write_deployment(folder, "ep1", "d1")
    write_deployment(folder, "ep1", "e5")
    gw = GatewayProcess(folder / "state", [str(folder)]).start()
    try:
        gw.wait_ready("ep1", ["d1", "e5"])
        yield gw
    finally:
        gw.kill_everything()


BAD_NAMES = ["ep1/deployments/e5", "ep1/deployments/d1", "ep1?", "ep1#x", "bad name!", "é", "..", "e"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_endpoint_verbs_refuse_a_name_outside_the_rule(gateway, name, capsys):
    """In this process (the CLI's main, against the running gateway): 40 CLI processes
    would cost the suite ~15 s; one per kind of flag runs below."""
    for verb in ("show", "delete", "get-credentials", "get-token", "regenerate-keys"):
        code = main(["endpoint", verb, "-n", name, "--state-dir", str(gateway.state.root)])
        out, err = capsys.readouterr()
        assert code == 2, (verb, out, err)
        assert out == "" and "Traceback" not in err, (verb, err)
        assert "--name" in err and "letters, digits or '-'" in err, (verb, err)
    assert gateway.deployment("ep1", "e5")["name"] == "e5"  # the refused delete touched nothing


def test_deployment_and_batch_verbs_refuse_a_bad_name_in_any_flag(gateway):
    for args in (["deployment", "delete", "-n", "e5/../d1", "-e", "ep1"],
                 ["deployment", "show", "-n", "e5", "-e", "ep1/deployments/e5"],
                 ["deployment", "list", "-e", "ep1?x"],
                 ["endpoint", "invoke", "-n", "ep1", "-r", "nowhere.json", "-d", "d1?"],
                 ["batch", "show", "-n", "a/b"],
                 ["job", "list", "-n", "ep1%2F"]):
        done = gateway.cli(*args)
        assert done.returncode == 2 and done.stdout == "", (args, done.stderr)
        assert "Traceback" not in done.stderr and "letters, digits or '-'" in done.stderr, (args, done.stderr)
    assert gateway.deployment("ep1", "e5")["name"] == "e5"


def test_an_encoded_slash_is_part_of_the_name_on_the_admin_api(gateway):
    """The handler gets the decoded segment as one name: no such endpoint, a 404 — it does
    not reach the deployment the unencoded path would name."""
    for method in ("GET", "DELETE"):
        status, body = gateway.admin(method, "/api/v1/endpoints/ep1%2Fdeployments%2Fe5")
        assert status == 404 and "ep1/deployments/e5" in body["message"], (method, body)
    status, body = gateway.admin("GET", "/api/v1/endpoints/ep1%3F/keys")
    assert status == 404 and "primaryKey" not in body
    status, body = gateway.admin("DELETE", "/api/v1/endpoints/ep1/deployments/e5%2F..%2Fd1")
    assert status == 404, body
    status, body = gateway.admin("GET", "/api/v1/batch/endpoints/a%2Fb")
    assert status == 404, body
    assert gateway.deployment("ep1", "e5")["name"] == "e5"
    assert gateway.deployment("ep1", "d1")["name"] == "d1"


def test_good_names_still_work(gateway):
    assert gateway.cli_json("endpoint", "show", "-n", "ep1")["traffic"] == {"d1": 100}
    assert gateway.cli_json("deployment", "show", "-n", "e5", "-e", "ep1")["name"] == "e5"
    done = gateway.cli("endpoint", "show", "-n", "nope")
    assert done.returncode == 1 and "no endpoint 'nope'" in done.stderr


# Every verb that names a thing the gateway does not have: exit 1, one line naming it.
MISSING = [
    (["endpoint", "show", "-n", "nope"], "no endpoint 'nope'"),
    (["endpoint", "delete", "-n", "nope", "-y"], "no endpoint 'nope'"),
    (["endpoint", "get-credentials", "-n", "nope"], "no endpoint 'nope'"),
    (["endpoint", "get-token", "-n", "nope"], "no endpoint 'nope'"),
    (["endpoint", "regenerate-keys", "-n", "nope"], "no endpoint 'nope'"),
    (["endpoint", "update", "-n", "nope", "--traffic", "d1=100"], "no endpoint 'nope'"),
    (["endpoint", "invoke", "-n", "nope", "-r", __file__], "no endpoint 'nope'"),
    (["deployment", "list", "-e", "nope"], "no endpoint 'nope'"),
    (["deployment", "show", "-n", "nope", "-e", "ep1"], "no deployment 'nope' on endpoint 'ep1'"),
    (["deployment", "delete", "-n", "nope", "-e", "ep1", "-y"], "no deployment 'nope' on endpoint 'ep1'"),
    (["deployment", "logs", "-n", "nope", "-e", "ep1"], "no deployment 'nope' on endpoint 'ep1'"),
    (["deployment", "scale", "-n", "nope", "-e", "ep1", "--instance-count", "1"],
     "no deployment 'nope' on endpoint 'ep1'"),
    (["deployment", "show", "-n", "d1", "-e", "nope"], "no deployment 'd1' on endpoint 'nope'"),
    (["batch", "show", "-n", "nope"], "no batch endpoint 'nope'"),
    (["batch", "invoke", "-n", "nope", "-i", __file__], "no batch endpoint 'nope'"),
    (["job", "list", "-n", "nope"], "no batch endpoint 'nope'"),
    (["job", "show", "-n", "nope", "-j", "j1"], "no batch endpoint 'nope'"),
    (["job", "cancel", "-n", "nope", "-j", "j1"], "no batch endpoint 'nope'"),
    (["job", "download", "-n", "nope", "-j", "j1"], "no batch endpoint 'nope'"),
    (["job", "logs", "-n", "nope", "-j", "j1"], "no batch endpoint 'nope'"),
]


@pytest.mark.parametrize(("argv", "said"), MISSING, ids=[" ".join(a[:2]) for a, _ in MISSING])
def test_a_missing_thing_is_exit_1_for_every_verb(gateway, argv, said, capsys):
    code = main([*argv, "--state-dir", str(gateway.state.root)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, ""), (argv, code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and said in err, (argv, err)
