"""The live status page in a real headless browser (Debian's chromium driven by
Playwright), against a real gateway with an endpoint under steady load, a failed
rollout and a batch job running.

Two ways to reach the page:
- "harness": serving.status.StatusPage served by this test process over a snapshot
  source made from the live gateway's admin API and /metrics (serving.status.remote);
  it checks the page itself whatever the gateway's wiring;
- "gateway": the page on the gateway's own admin port (`GET /` with the admin token),
  as serving.embedded wires it. Skipped while embedded.py does not wire serving.status.

Set SCOREGATE_UPDATE_DOCS_SCREENSHOT=1 to also copy the screenshot to
docs/img/status-page.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from serving.client import AdminClient
from serving.status import StatusPage
from serving.status.remote import RemoteSnapshot
from tests.support.clients import scoring_session
from tests.support.gateway import REPO, GatewayProcess, wait_for
from tests.support.load import SteadyLoad
from tests.support.manifests import write_deployment, write_endpoint
from tests.unit.batch.batch_support import write_batch_endpoint

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SLOTS = {"max_concurrent_requests_per_instance": 4, "max_queue_wait_ms": 2000}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("status")
    yaml_dir = folder / "yaml"
    yaml_dir.mkdir()
    write_endpoint(yaml_dir, "demo", traffic={"blue": 90, "green": 10})
    write_deployment(yaml_dir, "demo", "blue", env={"SLEEP_S": "0.005"}, instance_count=2, request_settings=SLOTS)
    write_deployment(yaml_dir, "demo", "green", env={"SLEEP_S": "0.005"}, request_settings=SLOTS, scale_settings={
        "type": "target_utilization", "min_instances": 1, "max_instances": 2,
        "target_utilization_percentage": 70, "polling_interval": 1})
    write_deployment(yaml_dir, "demo", "red", env={"INIT_FAIL": "1"})
    batch = write_batch_endpoint(folder / "batch", "nightly", env={"DELAY": "0.04"},
                                 settings={"mini_batch_size": 10, "max_concurrency_per_instance": 1})
    gw = GatewayProcess(folder / "state", [str(yaml_dir), str(batch)]).start()
    try:
        gw.wait_ready("demo", ["blue", "green"])
        wait_for(lambda: gw.deployment("demo", "red")["provisioning_state"] == "Failed", 30, "red to fail")
        yield gw
    finally:
        gw.kill_everything()


async def start_harness(gw: GatewayProcess) -> tuple[web.AppRunner, str]:
    # A sample per refresh (RemoteSnapshot keeps one per 0.5 s at most): the chart has the
    # points the test waits for in half the time of a 1 s refresh.
    remote = RemoteSnapshot(AdminClient(gw.info))
    app = web.Application()
    app.add_routes(StatusPage(remote.snapshot, admin_token=gw.info.admin_token, refresh_s=0.5).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def load_for(gw: GatewayProcess, rate: float) -> SteadyLoad:
    key = gw.keys("demo")[0]
    return SteadyLoad(gw.info.ca_cert, f"{gw.scoring_url}/api/v1/endpoint/demo/score",
                      {"Authorization": f"Bearer {key}"}, rate, max_duration_s=45)


async def submit_batch_job(gw: GatewayProcess, items: int) -> str:
    status, keys = gw.admin("GET", "/api/v1/batch/endpoints/nightly/keys")
    assert status == 200, keys
    async with scoring_session(gw.info.ca_cert) as session:
        async with session.post(f"{gw.scoring_url}/api/v1/batch/nightly/jobs",
                                json={"input": {"type": "inline", "data": [[i] for i in range(items)]}},
                                headers={"Authorization": f"Bearer {keys['primaryKey']}"}) as response:
            assert response.status == 202, await response.text()
            return (await response.json())["id"]


@pytest.fixture(params=["harness", "gateway"])
async def status_url(request, gateway):
    if request.param == "gateway":
        yield gateway.info.admin_url
        return
    runner, url = await start_harness(gateway)
    yield url
    await runner.cleanup()


async def test_status_page_in_a_browser_under_load(gateway, status_url, tmp_path):
    playwright_api = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("no system chromium (apt-get install chromium)")
    load = load_for(gateway, 40).start()
    job_id = await submit_batch_job(gateway, 4000)
    errors: list[str] = []
    try:
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1400, "height": 900})
                page = await context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"{status_url}/?token={gateway.info.admin_token}")
                assert page.url == f"{status_url}/"  # the token left the address bar
                [cookie] = [c for c in await context.cookies() if c["name"] == "scoregate_status"]
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                assert cookie["value"] != gateway.info.admin_token
                rps_chart = 'svg.chart[data-key="demo/blue"][data-chart="rps"]'
                await page.wait_for_function(
                    f"""() => {{ const svg = document.querySelector('{rps_chart}');
                          return svg && Number(svg.getAttribute('data-points-0')) >= 6
                                 && Number(document.body.getAttribute('data-updates')) >= 3; }}""",
                    timeout=30_000)
                shot = tmp_path / "status-page.png"
                await page.screenshot(path=str(shot), full_page=True)
                await check_page(page, job_id, rps_chart)
            finally:
                await browser.close()
    finally:
        result = await load.stop()
    assert errors == []
    # The load is there to feed the live figures; on a busy machine a few requests may
    # meet a full queue while the batch job and the browser share the CPU.
    assert result.statuses[200] >= 0.9 * result.sent, (result.statuses, result.errors)
    assert shot.stat().st_size > 20_000
    if os.environ.get("SCOREGATE_UPDATE_DOCS_SCREENSHOT"):
        (REPO / "docs" / "img").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "status-page.png")


async def check_page(page, job_id: str, rps_chart: str) -> None:
    assert await page.locator(".endpoint-name").all_inner_texts() == ["demo"]
    shares = await page.locator(".traffic-share").all_inner_texts()
    assert [s.strip() for s in shares] == ["blue 90%", "green 10%"]
    states = dict(zip(await page.locator("article.deployment .deployment-name").all_inner_texts(),
                      await page.locator("article.deployment .deployment-state").all_inner_texts()))
    assert states == {"blue": "Succeeded", "green": "Succeeded", "red": "Failed"}
    red = page.locator('article.deployment[data-key="demo/red"]')
    assert "bad model" in await red.inner_text()
    blue = page.locator('article.deployment[data-key="demo/blue"]')
    assert (await blue.locator("table.replicas").inner_text()).count("healthy") == 2
    assert "readiness" in await blue.locator("table.stages").inner_text()
    figures = dict(zip(await blue.locator("dl.figures dt").all_inner_texts(),
                       await blue.locator("dl.figures dd").all_inner_texts()))
    assert figures["Traffic"] == "90%" and figures["Replicas"] == "2 / 2" and float(figures["Req/s"]) > 10
    assert figures["p99"].endswith(" ms")
    lines = page.locator(f"{rps_chart} polyline")
    assert await lines.count() >= 1 and int(await lines.first.get_attribute("data-points")) >= 3
    assert len(re.findall(r"[\d.]+,[\d.]+", await lines.first.get_attribute("points"))) >= 3
    assert await page.locator('svg.chart[data-key="demo/blue"][data-chart="latency"] polyline').count() >= 2
    job = page.locator(f'tr[data-job="{job_id}"]')
    assert await job.count() == 1 and await job.locator("progress").count() == 1
    assert re.search(r"Queued|Running|Completed", await job.inner_text())


async def test_gateway_serves_the_status_routes_behind_the_admin_token(gateway):
    admin, token = gateway.info.admin_url, gateway.info.admin_token
    load = load_for(gateway, 30).start()
    try:
        async with aiohttp.ClientSession() as http:
            # Until the live figures have the load in them (they are asserted below), not a
            # fixed 3 s: the gateway samples once a second.
            deadline = time.monotonic() + 20
            while True:
                async with http.get(f"{admin}/api/v1/status", headers={"Authorization": f"Bearer {token}"}) as r:
                    live = next(d for d in (await r.json())["deployments"] if d["key"] == "demo/blue").get("live") or {}
                if (live.get("requests_per_s") or 0) > 10 and len((live.get("series") or {}).get("t") or ()) >= 2:
                    break
                assert time.monotonic() < deadline, f"no live figures for demo/blue under load: {live}"
                await asyncio.sleep(0.2)
            async with http.get(f"{admin}/") as r:
                assert r.status == 401 and 'action="/login"' in await r.text()
            async with http.get(f"{admin}/status.json") as r:
                assert r.status == 401
            async with http.get(f"{admin}/api/v1/status") as r:
                assert r.status == 401
            async with http.get(f"{admin}/?token={token}", allow_redirects=False) as r:
                assert r.status == 303
                session = r.cookies["scoregate_status"].value
            async with http.get(f"{admin}/api/v1/status", headers={"Cookie": f"scoregate_status={session}"}) as r:
                assert r.status == 401  # the cookie opens the status page, not the management API
            async with http.get(f"{admin}/status.json", headers={"Cookie": f"scoregate_status={session}"}) as r:
                assert r.status == 200 and (await r.json())["endpoints"][0]["name"] == "demo"
            async with http.get(f"{admin}/api/v1/status", headers={"Authorization": f"Bearer {token}"}) as r:
                snapshot = await r.json()
    finally:
        result = await load.stop()
    assert result.failed == 0
    assert snapshot["gateway"]["source"] == "gateway" and snapshot["gateway"]["routing_table_version"] > 0
    blue = next(d for d in snapshot["deployments"] if d["key"] == "demo/blue")
    assert blue["live"]["requests_per_s"] > 10 and len(blue["live"]["series"]["t"]) >= 2
    assert json.dumps(snapshot).count(gateway.keys("demo")[0]) == 0
    assert time.time() - snapshot["generated_at"] < 10
