"""`scoregate top` against a real gateway under load: the deployments of the endpoint,
their state, traffic and replicas, and live figures that show the load. run_top is
called directly (two frames); the `top` CLI verb is checked once the CLI has it."""

from __future__ import annotations

import asyncio
import io

import pytest

from serving.client import AdminClient
from serving.top import run_top
from tests.support.load import SteadyLoad
from tests.support.manifests import write_deployment, write_endpoint


@pytest.fixture
def gateway(make_gateway, tmp_path):
    write_endpoint(tmp_path, "topdemo", traffic={"blue": 70, "green": 30})
    for name in ("blue", "green"):
        write_deployment(tmp_path, "topdemo", name, env={"SLEEP_S": "0.005"})
    gw = make_gateway([str(tmp_path)])
    gw.wait_ready("topdemo", ["blue", "green"])
    return gw


def rows(frame: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in frame.splitlines() if line.startswith("topdemo/")}


async def test_top_shows_deployments_and_live_figures(gateway):
    key = gateway.keys("topdemo")[0]
    load = SteadyLoad(gateway.info.ca_cert, f"{gateway.scoring_url}/api/v1/endpoint/topdemo/score",
                      {"Authorization": f"Bearer {key}"}, 30, max_duration_s=30).start()
    try:
        await asyncio.sleep(2.5)
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
