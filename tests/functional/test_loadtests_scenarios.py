"""Targets and scenarios against one real gateway (`scoregate serve` as a child).

Each scenario runs in smoke mode, shortened further here: the point is that it
runs end to end against a real gateway and reports what it promises, not to
measure anything.  One gateway serves every test (separate endpoints, so the
rollout and the kill do not disturb the others) to keep the module fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtests.cli import run_cli
from tests.support.gateway import GatewayProcess, alive
from tests.support.manifests import write_deployment, write_endpoint

BODY = '{"x": 1}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lt-yaml")
    for endpoint, count in (("lt", 1), ("roll", 1), ("kill", 2)):
        write_endpoint(folder, endpoint, traffic={"blue": 100})
        write_deployment(folder, endpoint, "blue", instance_count=count)
    write_endpoint(folder, "auto", traffic={"scaled": 100})
    path = write_deployment(folder, "auto", "scaled", env={"SLEEP_S": "0.02"},
                            request_settings={"max_concurrent_requests_per_instance": 1,
                                              "max_queue_wait_ms": 2000})
    body = yaml.safe_load(path.read_text())
    body["scale_settings"] = {"type": "target_utilization", "min_instances": 1,
                              "max_instances": 2, "target_utilization_percentage": 50,
                              "polling_interval": 1}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    gw = GatewayProcess(tmp_path_factory.mktemp("lt") / "state", [str(folder)])
    try:
        gw.start()
        gw.wait_ready("lt", ["blue"])
        gw.wait_ready("roll", ["blue"])
        gw.wait_ready("kill", ["blue"])
        gw.wait_ready("auto", ["scaled"])
        yield gw
    finally:
        gw.kill_everything()


def scenario(gateway, tmp_path, capsys, name, endpoint, *extra):
    out = tmp_path / name
    code = run_cli(["scenario", name, "--endpoint", endpoint, "--state-dir",
                    str(gateway.state.root), "--body", BODY, "--smoke", "--output", str(out),
                    "--quiet", "--no-plots", "--format", "json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["scenario"] == name and report["headline"]
    assert json.loads((out / "scenario.json").read_text())["facts"] == report["facts"]
    assert (out / "summary.md").read_text().startswith(f"# Scenario: {name}")
    assert json.loads((out / "results.json").read_text())["label"] == f"gateway:{endpoint}"
    return report


def test_endpoint_and_replica_targets(gateway, tmp_path, capsys):
    state = str(gateway.state.root)
    for where in (["--endpoint", "lt"], ["--replica", "lt/blue"]):
        out = tmp_path / where[1].replace("/", "-")
        code = run_cli(["run", *where, "--state-dir", state, "--body", BODY, "--rate", "40",
                        "--duration", "0.5", "--output", str(out), "--quiet", "--no-plots",
                        "--format", "json"])
        result = json.loads(capsys.readouterr().out)
        assert code == 0
        assert result["requests"]["ok"] == 20 and result["status"] == {"200": 20}
        assert result["config"]["method"] == "POST"
    replica = gateway.deployment("lt", "blue")["replicas"][0]
    assert result["config"]["url"] == f"http://127.0.0.1:{replica['port']}/score"
    assert result["label"] == "replica:lt/blue"


def test_scoregate_loadtest_reaches_an_endpoint_by_name(gateway, tmp_path):
    done = gateway.cli("loadtest", "--endpoint", "lt", "--body", BODY, "--rate", "20",
                       "--duration", "0.5", "--output", str(tmp_path / "o"), "--quiet",
                       "--no-plots", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["requests"]["ok"] == 10
    assert data["config"]["url"] == f"{gateway.scoring_url}/api/v1/endpoint/lt/score"


def test_wrong_targets_are_refused(gateway, tmp_path, capsys):
    state = str(gateway.state.root)
    base = ["--rate", "1", "--duration", "0.1", "--quiet", "--output", str(tmp_path / "x")]
    assert run_cli(["run", "--endpoint", "nope", "--state-dir", state, *base]) == 2  # a usage error
    assert capsys.readouterr().err == "loadtests: error: no endpoint 'nope'\n"
    assert run_cli(["run", "--endpoint", "lt", "--state-dir", str(tmp_path), *base]) == 3
    assert "no running gateway" in capsys.readouterr().err
    assert run_cli(["scenario", "rollout", "--url", "http://127.0.0.1:9/", "--smoke",
                    "--quiet"]) == 2  # a usage error, as the unknown endpoint above
    assert "give --endpoint NAME" in capsys.readouterr().err


# Scenario options that cannot make the run: usage errors, exit 2 as argparse's own, told
# before any request (the URL is a closed port: nothing is sent, nothing is written).
SCENARIO_USAGE = [
    (["burst", "--at", "100", "--duration", "5"], "the burst must end before --duration: --at 100"),
    (["burst", "--length", "-1", "--smoke"], "argument --length: must be > 0: '-1'"),
    (["burst", "--peak", "5e6", "--smoke"], "rate must be between 0 and 1e+06"),
    (["step", "--step-seconds", "0", "--smoke"], "argument --step-seconds: must be > 0: '0'"),
    (["steady", "--warmup", "-1", "--smoke"], "argument --warmup: must be between 0 and 3600: '-1'"),
    (["replica-failure", "--endpoint", "kill", "--at", "-1", "--smoke"], "argument --at: must be >= 0"),
    (["autoscale", "--url", "http://127.0.0.1:9/", "--smoke"], "the autoscale scenario acts on the gateway"),
]


@pytest.mark.parametrize(("argv", "said"), SCENARIO_USAGE, ids=[" ".join(a[:2]) for a, _ in SCENARIO_USAGE])
def test_scenario_usage_errors_exit_2(argv, said, tmp_path, capsys):
    target = [] if {"--url", "--endpoint"} & set(argv) else ["--url", "http://127.0.0.1:9/"]
    try:
        code = run_cli(["scenario", *argv, *target, "--quiet", "--output", str(tmp_path / "o")])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_scoregate_loadtest_scenario_usage_error_exits_2(tmp_path):
    """The same through the gateway's CLI, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "serving.cli", "loadtest", "scenario", "burst", "--url",
                           "http://127.0.0.1:9/", "--at", "9", "--duration", "3", "--quiet",
                           "--output", str(tmp_path / "o")], capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr == "loadtests: error: the burst must end before --duration: --at 9 + --length 2 >= 3 s\n"


def test_steady(gateway, tmp_path, capsys):
    report = scenario(gateway, tmp_path, capsys, "steady", "lt", "--duration", "1")
    facts = report["facts"]
    assert facts["sent"] == 50 and facts["ok"] == 50 and facts["failed"] == 0
    assert facts["p50_ms"] > 0 and facts["worst_second"] is not None
    assert report["headline"].startswith("50 req/s for 1 s: 50/50 ok")


def test_step(gateway, tmp_path, capsys):
    report = scenario(gateway, tmp_path, capsys, "step", "lt", "--rates", "20,40",
                      "--step-seconds", "0.5")
    steps = report["facts"]["steps"]
    assert [s["rate"] for s in steps] == [20, 40]
    assert report["run"]["requests"]["sent"] == 30
    assert all("problem" in s and "p99_ms" in s for s in steps)


def test_burst(gateway, tmp_path, capsys):
    report = scenario(gateway, tmp_path, capsys, "burst", "lt", "--rate", "20", "--peak", "100",
                      "--at", "0.5", "--length", "0.3", "--duration", "1.5")
    facts = report["facts"]
    assert facts["requests_in_burst"] == 30
    assert abs(report["run"]["requests"]["sent"] - (20 * 1.2 + 30)) <= 2
    assert {"before", "during", "after"} <= set(facts)
    assert [e["event"][:11] for e in report["timeline"][:2]] == ["burst start", "burst ends "]


def test_rollout(gateway, tmp_path, capsys):
    before = gateway.deployment("roll", "blue")
    old = {r["replica_id"] for r in before["replicas"]}
    report = scenario(gateway, tmp_path, capsys, "rollout", "roll", "--duration", "2.5",
                      "--at", "0.5")
    facts = report["facts"]
    assert facts["rollout_s"] is not None and 0 < facts["rollout_s"] < 2.5
    assert set(facts["old_replicas"]) == old and not old & set(facts["new_replicas"])
    assert facts["failed_during_rollout"] == sum(facts["failed_during_rollout_by_outcome"].values())
    after = gateway.deployment("roll", "blue")
    assert "SCOREGATE_LOADTEST_ROLLOUT" in after["environment_variables"]
    assert after["environment_variables"]["LABEL"] == "blue"  # the rest kept


def test_replica_failure(gateway, tmp_path, capsys):
    report = scenario(gateway, tmp_path, capsys, "replica-failure", "kill", "--duration", "2.5",
                      "--at", "0.5")
    facts = report["facts"]
    assert not alive(facts["victim_pid"])
    assert facts["replacement_ready_after_s"] is not None
    assert facts["time_to_recovery_s"] >= facts["replacement_ready_after_s"]
    assert facts["failed_after_kill"] + facts["failed_before_kill"] == report["run"]["requests"]["failed"]
    pids = {r["pid"] for r in gateway.deployment("kill", "blue")["replicas"] if r["state"] == "ready"}
    assert len(pids) == 2 and facts["victim_pid"] not in pids


def test_autoscale_reports_replica_counts(gateway, tmp_path, capsys):
    report = scenario(gateway, tmp_path, capsys, "autoscale", "auto", "--duration", "2.5",
                      "--poll", "0.25")
    facts = report["facts"]
    assert facts["autoscaled"] and facts["ready_at_start"] >= 1
    assert facts["samples"] and all({"ready", "live", "desired", "rate"} <= set(s)
                                    for s in facts["samples"])
    assert ("scaled up" in report["headline"]) == facts["scale_up_observed"]
    assert facts["scale_up_observed"] or report["headline"].startswith("no scale-up observed")


def test_kill_refuses_a_pid_outside_the_gateway(gateway):
    from loadtests.scenarios.replica_failure import ScenarioError, _kill

    bystander = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(ScenarioError, match="not a process of the gateway"):
            _kill(bystander.pid, gateway.process.pid)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
