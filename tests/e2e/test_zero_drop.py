"""Changes under a steady load at about 70% of capacity complete with zero failed
requests: scaling down, replacing every replica, shifting traffic between deployments.
And the autoscaler: scale up under load, then a conservative scale-down."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.support.clients import scoring_session
from tests.support.gateway import wait_for
from tests.support.load import SteadyLoad
from tests.support.manifests import write_deployment, write_endpoint

# Each echo replica sleeps 50 ms per request with one slot: 20 requests/s at most, a
# capacity set by the sleep rather than by the CPU, so it holds on a busy machine.
SLOW = {"SLEEP_S": "0.05"}
RATE = 28  # 70% of two replicas
ONE_SLOT = {"max_concurrent_requests_per_instance": 1, "max_queue_wait_ms": 2000}


def load_for(gw, endpoint, rate):
    key = gw.keys(endpoint)[0]
    return SteadyLoad(gw.info.ca_cert, f"{gw.scoring_url}/api/v1/endpoint/{endpoint}/score",
                      {"Authorization": f"Bearer {key}"}, rate)


async def cli_json(gw, *args):
    return await asyncio.to_thread(gw.cli_json, *args)


async def wait_async(predicate, timeout_s, what):
    return await asyncio.to_thread(wait_for, predicate, timeout_s, what, 0.1)


def live_replicas(gw, endpoint, name):
    return [r for r in gw.deployment(endpoint, name)["replicas"] if r["state"] in ("ready", "starting")]


async def test_scale_down_under_load_drops_nothing(gateway, tmp_path):
    write_endpoint(tmp_path, "shrink", traffic={"main": 100})
    write_deployment(tmp_path, "shrink", "main", env=SLOW, instance_count=3, request_settings=ONE_SLOT)
    await cli_json(gateway, "apply", "-f", str(tmp_path))
    await asyncio.to_thread(gateway.wait_ready, "shrink", ["main"])
    load = load_for(gateway, "shrink", rate=RATE).start()
    await asyncio.sleep(1.5)
    version = gateway.deployment("shrink", "main")["version"]
    scaled = await cli_json(gateway, "deployment", "scale", "-n", "main", "-e", "shrink", "--instance-count", "2")
    assert (scaled["instance_count"], scaled["version"]) == (2, version)  # a scale is not a new version
    await wait_async(lambda: len(live_replicas(gateway, "shrink", "main")) == 2, 20, "scale-down to 2")
    await asyncio.sleep(1.5)
    result = await load.stop()
    assert result.sent > 70
    assert result.failed == 0, (result.statuses, result.codes, result.errors)


async def test_replacing_every_replica_under_load_drops_nothing(gateway, tmp_path):
    write_endpoint(tmp_path, "roll", traffic={"main": 100})
    write_deployment(tmp_path, "roll", "main", env={**SLOW, "VERSION": "1"}, instance_count=2,
                     request_settings=ONE_SLOT)
    await cli_json(gateway, "apply", "-f", str(tmp_path))
    await asyncio.to_thread(gateway.wait_ready, "roll", ["main"])
    old_pids = {r["pid"] for r in gateway.deployment("roll", "main")["replicas"]}
    load = load_for(gateway, "roll", rate=RATE).start()
    await asyncio.sleep(1.0)
    write_deployment(tmp_path, "roll", "main", env={**SLOW, "VERSION": "2"}, instance_count=2,
                     request_settings=ONE_SLOT)
    await cli_json(gateway, "apply", "-f", str(tmp_path))

    def replaced():
        replicas = gateway.deployment("roll", "main")["replicas"]
        pids = {r["pid"] for r in replicas}
        return len(replicas) == 2 and not pids & old_pids and all(r["state"] == "ready" for r in replicas)

    await wait_async(replaced, 30, "every replica replaced")
    await asyncio.sleep(1.0)
    result = await load.stop()
    assert result.sent > 50
    assert result.failed == 0, (result.statuses, result.codes, result.errors)


async def test_shifting_traffic_between_deployments_drops_nothing(gateway, tmp_path):
    write_endpoint(tmp_path, "shift", traffic={"one": 100, "two": 0})
    write_deployment(tmp_path, "shift", "one", env=SLOW, instance_count=2, request_settings=ONE_SLOT)
    write_deployment(tmp_path, "shift", "two", env=SLOW, instance_count=2, request_settings=ONE_SLOT)
    await cli_json(gateway, "apply", "-f", str(tmp_path))
    await asyncio.to_thread(gateway.wait_ready, "shift", ["one", "two"])
    load = load_for(gateway, "shift", rate=RATE).start()
    await asyncio.sleep(1.5)
    write_endpoint(tmp_path, "shift", traffic={"one": 0, "two": 100})
    await cli_json(gateway, "apply", "-f", str(tmp_path))
    await asyncio.sleep(1.5)
    result = await load.stop()
    assert result.failed == 0, (result.statuses, result.codes, result.errors)
    assert result.deployments["one"] > 20 and result.deployments["two"] > 20
    assert set(result.last_deployments[-20:]) == {"two"}


async def test_autoscaler_scales_up_under_load_and_down_conservatively(gateway, tmp_path):
    write_endpoint(tmp_path, "auto", traffic={"main": 100})
    write_deployment(tmp_path, "auto", "main", env={"SLEEP_S": "0.05"}, instance_count=1,
                     request_settings=ONE_SLOT,
                     scale_settings={"type": "target_utilization", "min_instances": 1, "max_instances": 3,
                                     "target_utilization_percentage": 70, "polling_interval": 0.25})
    await cli_json(gateway, "apply", "-f", str(tmp_path))
    await asyncio.to_thread(gateway.wait_ready, "auto", ["main"])
    # 30 requests/s of 50 ms work = 1.5 busy replicas: ceil(1.5 / 0.7) = 3 replicas needed.
    load = load_for(gateway, "auto", rate=30).start()
    await wait_async(lambda: len([r for r in gateway.deployment("auto", "main")["replicas"]
                                  if r["state"] == "ready"]) >= 3, 20, "scale-up to 3 ready replicas")
    shown = gateway.deployment("auto", "main")
    assert shown["desired_replicas"] == 3 and shown["autoscale"]["utilization"] > 0
    spike = await load.stop()  # requests during the spike may get 429: the autoscaler lags it
    assert spike.statuses[200] > 0
    # Scaled out, the same load is served in full.
    steady = load_for(gateway, "auto", rate=30).start()
    await asyncio.sleep(2.0)
    result = await steady.stop()
    assert result.sent > 40 and result.failed == 0, (result.statuses, result.codes, result.errors)

    idle_since = time.monotonic()
    # Six polls after the load ended (1.5 s, well under 20 intervals of 0.25 s): no scale-down yet.
    polls = gateway.metric("scoregate_autoscale_polls_total", endpoint="auto", deployment="main") or 0.0
    await wait_async(lambda: (gateway.metric("scoregate_autoscale_polls_total", endpoint="auto",
                                             deployment="main") or 0.0) >= polls + 6, 20, "six more autoscaler polls")
    assert gateway.deployment("auto", "main")["desired_replicas"] == 3
    # The first scale-down: to the most replicas needed during its 20 low intervals, which
    # may hold the steady load's last ones (then 2, and 1 twenty intervals later) or not (1).
    await wait_async(lambda: gateway.deployment("auto", "main")["desired_replicas"] < 3, 20, "a scale-down")
    assert time.monotonic() - idle_since >= 4.5  # about 20 polling intervals of 0.25 s
    desired = gateway.deployment("auto", "main")["desired_replicas"]
    await wait_async(lambda: len(live_replicas(gateway, "auto", "main")) == desired, 20, "replicas stopped")


async def score_slow(session, gw, key: str) -> int:
    """One request to endpoint `slow`: the answer's status."""
    async with session.post(f"{gw.scoring_url}/api/v1/endpoint/slow/score", json={},
                            headers={"Authorization": f"Bearer {key}"}) as r:
        await r.read()
        return r.status


async def test_shutdown_finishes_requests_in_flight(make_gateway, tmp_path):
    write_endpoint(tmp_path, "slow", traffic={"main": 100})
    write_deployment(tmp_path, "slow", "main", env={"SLEEP_S": "1.5"}, instance_count=2)
    gw = make_gateway([str(tmp_path)])
    await asyncio.to_thread(gw.wait_ready, "slow", ["main"])
    key = gw.keys("slow")[0]
    async with scoring_session(gw.info.ca_cert) as session:
        in_flight = [asyncio.create_task(score_slow(session, gw, key)) for _ in range(4)]
        await wait_async(lambda: gw.metric("scoregate_deployment_in_flight_requests", endpoint="slow") == 4,
                         20, "all four requests at the model")
        stopping = asyncio.create_task(asyncio.to_thread(gw.stop))
        results = await asyncio.gather(*in_flight)
    assert results == [200] * 4
    assert await stopping == 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_signal_stops_without_waiting_for_the_drain(make_gateway, tmp_path, workers):
    """The first SIGINT drains (here up to 60 s, for a request the model answers in 60 s);
    a second one stops the gateway now, as Ctrl-C twice does elsewhere (with --workers
    within the few seconds the main process gives its workers before it kills them)."""
    write_endpoint(tmp_path, "slow", traffic={"main": 100})
    write_deployment(tmp_path, "slow", "main", env={"SLEEP_S": "60"},
                     request_settings={"request_timeout_ms": 90000, "max_concurrent_requests_per_instance": 8})
    gw = make_gateway([str(tmp_path)], ["--drain-timeout", "60", "--workers", str(workers)])
    await asyncio.to_thread(gw.wait_ready, "slow", ["main"])
    key = gw.keys("slow")[0]
    async with scoring_session(gw.info.ca_cert) as session:
        in_flight = asyncio.create_task(score_slow(session, gw, key))
        await wait_async(lambda: gw.metric("scoregate_deployment_in_flight_requests", endpoint="slow") == 1,
                         20, "the request at the model")
        gw.process.send_signal(signal.SIGINT)
        await wait_async(lambda: "draining in-flight requests" in gw.log(), 20, "the drain begun")
        assert gw.process.poll() is None  # draining: it waits for the request
        # the second signal: well before the 60 s the drain would wait
        assert await asyncio.to_thread(gw.stop, signal.SIGINT, 30) == 0
        with pytest.raises(aiohttp.ClientError):  # cut, not answered
            await in_flight
    assert "second signal: not waiting for the requests in flight" in gw.log()
