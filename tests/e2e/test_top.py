"""`scoregate top` against a real gateway under load: the deployments of the endpoint,
their state, traffic and replicas, and live figures that show the load. run_top is
called directly (two frames); the `top` CLI verb is checked once the CLI has it."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from serving.client import AdminClient
from serving.top import run_top
from tests.support.gateway import GatewayProcess, wait_for
from tests.support.load import SteadyLoad
from tests.support.manifests import write_deployment, write_endpoint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One gateway for the module: the CLI verb only reads what the other test leaves."""
    folder = tmp_path_factory.mktemp("manifests")
    write_endpoint(folder, "topdemo", traffic={"blue": 70, "green": 30})
    for name in ("blue", "green"):
        write_deployment(folder, "topdemo", name, env={"SLEEP_S": "0.005"})
    gw = GatewayProcess(tmp_path_factory.mktemp("gw") / "state", [str(folder)]).start()
    try:
        gw.wait_ready("topdemo", ["blue", "green"])
        yield gw
    finally:
        gw.kill_everything()


def live_rates(gw) -> dict[str, float]:
    """requests/s per deployment in the gateway's live figures (what top shows)."""
    status, snapshot = gw.admin("GET", "/api/v1/status")
    assert status == 200, snapshot
    return {d["key"]: (d.get("live") or {}).get("requests_per_s") or 0.0 for d in snapshot["deployments"]}


def rows(frame: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in frame.splitlines() if line.startswith("topdemo/")}


async def test_top_shows_deployments_and_live_figures(gateway):
    key = gateway.keys("topdemo")[0]
    load = SteadyLoad(gateway.info.ca_cert, f"{gateway.scoring_url}/api/v1/endpoint/topdemo/score",
                      {"Authorization": f"Bearer {key}"}, 30, max_duration_s=30).start()
    try:
        # Until the live figures show the load (not a fixed 2.5 s); the frames are read after.
        await asyncio.to_thread(wait_for, lambda: (r := live_rates(gateway)).get("topdemo/blue", 0) > 10
                                and r.get("topdemo/green", 0) > 3, 20, "live figures under the load", 0.2)
        out = io.StringIO()
        code = await asyncio.to_thread(run_top, AdminClient(gateway.info), 1.5, 2, out=out)
    finally:
        result = await load.stop()
    assert code == 0 and result.failed == 0
    frames = [f for f in out.getvalue().split("scoregate top") if f.strip()]
    assert len(frames) == 2 and gateway.scoring_url in frames[0]
    last = rows(frames[1])
    assert set(last) == {"topdemo/blue", "topdemo/green"}
    blue, green = last["topdemo/blue"], last["topdemo/green"]
    assert blue[1:4] == ["Succeeded", "70%", "1/1"] and green[1:4] == ["Succeeded", "30%", "1/1"]
    assert float(blue[4]) > 10 and float(green[4]) > 3  # requests/s under a 30/s load
    assert float(blue[7]) >= float(blue[6]) > 0  # p99 >= p50, in ms
    assert blue[5] == "0"  # no errors


def test_top_verb_of_the_cli(gateway):
    done = gateway.cli("top", "--iterations", "2", "--interval", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("scoregate top") == 2 and "topdemo/blue" in done.stdout and "\x1b" not in done.stdout


def test_top_verb_with_o_json_prints_json_lines(gateway):
    """`top -o json` was accepted and printed the table."""
    done = gateway.cli("top", "--iterations", "2", "--interval", "0.2", "-o", "json")
    assert done.returncode == 0, done.stderr
    snapshots = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(snapshots) == 2
    assert {d["key"] for d in snapshots[-1]["deployments"]} == {"topdemo/blue", "topdemo/green"}


def test_o_json_before_the_verb_counts_too(gateway):
    """`scoregate -o json top`: the global flag, as every other verb takes it, used to be
    dropped and the table printed."""
    done = gateway.cli("-o", "json", "top", "--iterations", "1", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deployments"]
