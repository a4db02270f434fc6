"""`scoregate top` frames: the deployment table with live figures, rollouts in progress
or failed, unhealthy replicas, batch job progress; no escapes when not on a terminal."""

from __future__ import annotations

import io

from serving.client import CliError
from serving.status import assemble
from serving.status.live import DeploymentSample, LiveSeries, Sample
from serving.top import render_frame, run_top, sparkline


def snapshot() -> dict:
    live = LiveSeries(window_s=60, min_interval_s=1)
    live.add(Sample(0.0, {("shop", "blue"): DeploymentSample(requests=0, buckets={0.01: 0, float("inf"): 0})}))
    live.add(Sample(10.0, {("shop", "blue"): DeploymentSample(
        requests=125, errors=5, buckets={0.01: 120, float("inf"): 125}, utilization=0.5, queued=3, in_flight=2)}))
    endpoint = {"name": "shop", "traffic": {"blue": 100}, "mirror_traffic": {}}
    blue = {"name": "blue", "endpoint_name": "shop", "provisioning_state": "Updating", "ready_replicas": 2,
            "desired_replicas": 3, "rollout": {"state": "InProgress", "kind": "update", "stage": "init",
                                               "elapsed_s": 4.2, "budget": "20m0s"},
            "replicas": [{"replica_id": "blue-1", "state": "ready", "restarts": 0, "started_at": 1.0},
                         {"replica_id": "blue-2", "state": "starting", "phase": "init", "restarts": 1,
                          "started_at": 2.0}]}
    red = {"name": "red", "endpoint_name": "shop", "provisioning_state": "Failed", "ready_replicas": 0,
           "desired_replicas": 1, "replicas": [],
           "rollout": {"state": "Failed", "failed_stage": "init", "reason": "init() raised ValueError: bad model"}}
    job = {"id": "batchjob-1", "endpoint_name": "nightly", "deployment_name": "main", "status": "Running",
           "items": {"total": 200, "succeeded": 90, "failed": 10, "pending": 100}, "created_at": 1.0}
    return assemble([endpoint], [blue, red], batch_endpoints=[{"name": "nightly"}], jobs=[job], live=live)


def test_frame_has_the_live_table_rollouts_unhealthy_replicas_and_jobs():
    frame = render_frame(snapshot(), width=200)
    lines = frame.splitlines()
    header = next(line for line in lines if line.startswith("DEPLOYMENT"))
    assert header.split()[:11] == ["DEPLOYMENT", "STATE", "TRAFFIC", "READY", "REQ/S", "ERR%", "P50MS", "P99MS",
                                   "UTIL%", "QUEUE", "INFLIGHT"]
    blue = next(line for line in lines if line.startswith("shop/blue")).split()
    assert blue[:11] == ["shop/blue", "Updating", "100%", "2/3", "12.5", "4", "5.2", "10", "25", "3", "2"]
    assert any(line.startswith("shop/red") and "Failed" in line for line in lines)
    assert "  shop/blue: update in stage init for 4.2 s (budget 20m0s)" in lines
    assert "  shop/red: failed in stage init: init() raised ValueError: bad model" in lines
    assert "  shop/blue blue-2: starting (init), 1 restarts" in lines
    job = next(line for line in lines if line.startswith("batchjob-1"))
    assert "nightly/main" in job and "Running" in job and "[##########..........] 50%" in job and "90+10/200" in job
    assert "\x1b" not in frame


def test_colour_only_when_asked():
    assert "\x1b[32m" not in render_frame(snapshot()) and "\x1b[31m" in render_frame(snapshot(), color=True)


def test_sparkline_scales_to_the_highest_value():
    assert sparkline([0, 5, 10, None], 4) == "▁▄█ "
    assert sparkline([1, 2], 5) == "   ▄█"


class StubClient:
    """Answers `GET /status` like the admin API; or refuses it like an older gateway."""

    def __init__(self, has_status: bool = True) -> None:
        self.has_status = has_status
        self.calls = 0

    def get(self, path: str):
        self.calls += 1
        if path == "/status" and self.has_status:
            return snapshot()
        raise CliError("404: Not Found")


def test_run_top_prints_the_given_number_of_frames():
    out = io.StringIO()
    client = StubClient()
    assert run_top(client, 0.01, iterations=3, out=out) == 0
    assert client.calls == 3 and out.getvalue().count("scoregate top") == 3 and "shop/blue" in out.getvalue()
