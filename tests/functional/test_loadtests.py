"""The harness against real aiohttp servers on 127.0.0.1, started in the test.

The servers share the test's event loop with the generator, so rates stay
modest; the point is that the generator keeps (or honestly misses) its
schedule and that a stall shows in the open-loop tail.
"""

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from aiohttp import web

from loadtests.cli import run_cli
from loadtests.generators.http import Target
from loadtests.runner import RunSpec, run_async

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_app() -> web.Application:
    """Routes: / fast, /slow 200 ms, /error 500, /hang 1 s, /stall, /block, /flaky."""
    state = {"stall_until": None, "first": None, "blocked": False}

    async def fast(request):
        return web.Response(text="ok")

    async def slow(request):
        await asyncio.sleep(0.2)
        return web.Response(text="slow")

    async def error(request):
        return web.Response(status=500, text="boom")

    async def hang(request):
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    async def stall(request):
        # 0.5 s after the first request, every request arriving within the next
        # second waits until that second is over: one 1 s server stall.
        now = time.monotonic()
        state["first"] = state["first"] or now
        if state["stall_until"] is None and now - state["first"] >= 0.5:
            state["stall_until"] = now + 1.0
        if state["stall_until"] is not None and now < state["stall_until"]:
            await asyncio.sleep(state["stall_until"] - now)
        return web.Response(text="ok")

    async def block(request):
        # blocks the whole (shared) event loop once, starving the generator
        now = time.monotonic()
        state["first"] = state["first"] or now
        if not state["blocked"] and now - state["first"] >= 0.3:
            state["blocked"] = True
            time.sleep(0.3)
        return web.Response(text="ok")

    async def echo(request):
        # 200 only when the configured header and body arrived intact
        if request.headers.get("Authorization") != "Bearer k":
            return web.Response(status=401)
        if await request.read() != b"x" * 1000:
            return web.Response(status=400)
        return web.Response(text="ok")

    async def flaky(request):
        # every other request fails: a 50 % failure share
        state["flaky"] = not state.get("flaky")
        return web.Response(status=500 if state["flaky"] else 200)

    app = web.Application()
    for path, handler in (("/", fast), ("/slow", slow), ("/error", error), ("/hang", hang),
                          ("/stall", stall), ("/block", block), ("/flaky", flaky)):
        app.router.add_get(path, handler)
    app.router.add_post("/echo", echo)
    return app


@pytest.fixture
async def serve():
    """serve(app, ssl_context=None) -> base URL on 127.0.0.1; cleaned up after."""
    runners = []

    async def start(app=None, ssl_context=None) -> str:
        runner = web.AppRunner(app or make_app(), access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def open_spec(url, rate, duration, **kw):
    timeout = kw.pop("timeout", 5.0)
    return RunSpec(Target(url, timeout=timeout), duration=duration, mode="open",
                   profile=f"constant:{rate}", **kw)


async def test_open_loop_keeps_its_schedule(serve):
    base = await serve()
    r = await run_async(open_spec(base + "/", 200, 2.0))
    assert r.scheduled == 400 and r.sent == 400
    assert r.ok == 400 and r.failed == 0 and r.dropped_total == 0
    assert r.status == {"200": 400}
    assert r.target_rate == pytest.approx(200) and r.achieved_rate == pytest.approx(200)
    assert r.lateness.percentile_ms(99) < 20
    assert not r.fell_behind, r.behind_reasons()
    assert r.latency_ok.percentile_ms(50) < 20
    assert r.elapsed_s == pytest.approx(2.0, abs=0.3)
    done = [s["completed"] for s in r.series]
    assert sum(done) == 400 and done[0] == pytest.approx(200, abs=5)
    assert [s["scheduled"] for s in r.series][:2] == [200, 200]


async def test_a_low_rate_run_lasts_its_duration(serve):
    """At 1 request/s for 2.5 s the last start is at 2 s: the run used to end right after
    its answer, so a user asking for 2.5 s of load got ~2 s, and a series shorter than
    asked for. It ends when the duration does (then drains)."""
    base = await serve()
    r = await run_async(open_spec(base + "/", 1, 2.5))
    assert r.sent == r.ok == 3
    assert r.elapsed_s >= 2.5
    assert r.achieved_rate == pytest.approx(3 / 2.5)


async def test_rate_profile_is_followed(serve):
    base = await serve()
    spec = RunSpec(Target(base + "/"), duration=2.0, profile="step:100,300@1s")
    r = await run_async(spec)
    assert r.sent == 400 and r.ok == 400 and not r.fell_behind
    assert [s["scheduled"] for s in r.series][:2] == [100, 300]
    assert [s["sent"] for s in r.series][:2] == [100, 300]
    assert r.series[1]["completed"] == pytest.approx(300, abs=5)


async def test_in_flight_cap_makes_the_generator_fall_behind(serve):
    base = await serve()
    r = await run_async(open_spec(base + "/slow", 50, 1.0, max_in_flight=1))
    assert r.scheduled == 50
    assert r.sent <= 8
    assert r.dropped["in_flight_cap"] == r.scheduled - r.sent
    assert r.sent + r.dropped_total == r.scheduled
    assert r.fell_behind
    assert any("in-flight cap" in reason for reason in r.behind_reasons())


async def test_a_starved_generator_reports_its_lateness(serve):
    base = await serve()
    r = await run_async(open_spec(base + "/block", 200, 1.0))
    assert r.lateness.max_us >= 200_000
    assert r.fell_behind
    assert any("lateness" in reason for reason in r.behind_reasons())
    # the lateness is charged to the requests: measured from their scheduled start
    assert r.latency_all.max_us >= 200_000


async def test_coordinated_omission_is_visible(serve):
    open_base, closed_base = await serve(), await serve()
    # both at once (separate servers) to keep the suite fast
    opened, closed = await asyncio.gather(
        run_async(open_spec(open_base + "/stall", 200, 2.5)),
        run_async(RunSpec(Target(closed_base + "/stall"), duration=2.5, mode="closed",
                          connections=4)))
    assert opened.ok == opened.sent == 500
    assert opened.latency_ok.percentile_ms(50) < 50      # most requests were fast
    assert opened.latency_ok.percentile_ms(99) >= 500    # the stall is in the tail
    assert opened.latency_ok.percentile_ms(90) >= 300    # ~1/5 of requests waited
    assert max(s["p99_ms"] for s in opened.series) >= 500
    assert closed.latency_ok.max_us >= 500_000   # it did hit the stall...
    assert closed.latency_ok.percentile_ms(90) < 100  # ...but only 4 samples saw it


async def test_closed_loop_reports_throughput(serve):
    base = await serve()
    r = await run_async(RunSpec(Target(base + "/"), duration=1.0, mode="closed",
                                connections=8))
    assert r.ok > 100 and r.failed == 0
    assert r.sent == r.completed
    assert r.throughput == pytest.approx(r.completed / r.elapsed_s)
    assert r.achieved_rate > 100
    assert not r.fell_behind and r.target_rate is None


async def test_status_codes_and_timeouts_are_counted(serve):
    base = await serve()
    r = await run_async(open_spec(base + "/error", 100, 0.5))
    assert r.status == {"500": 50} and r.failed == 50 and r.ok == 0
    assert r.latency_all.count == 50 and r.latency_ok.count == 0
    r = await run_async(open_spec(base + "/hang", 20, 0.5, timeout=0.3))
    assert r.errors == {"timeout": 10} and r.failed == 10
    assert r.latency_all.percentile_ms(50) == pytest.approx(300, rel=0.2)


async def test_connect_errors_on_a_closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = await run_async(open_spec(f"http://127.0.0.1:{port}/", 100, 0.3))
    assert r.errors == {"connect": 30} and r.ok == 0
    assert "Connect" in r.error_samples["connect"]
    r = await run_async(RunSpec(Target(f"http://127.0.0.1:{port}/"), duration=0.3,
                                mode="closed", connections=2))
    assert set(r.errors) == {"connect"} and 2 <= r.errors["connect"] <= 100


async def test_resets_are_counted():
    async def slam(reader, writer):
        await reader.read(100)
        writer.transport.abort()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await run_async(open_spec(f"http://127.0.0.1:{port}/", 50, 0.4))
    finally:
        server.close()
        await server.wait_closed()
    assert r.errors == {"reset": 20}


async def test_post_with_headers_body_and_tls(serve, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    base = await serve(ssl_context=server_ctx)
    target = Target(base + "/echo", method="POST", body=b"x" * 1000, cafile=str(cafile),
                    headers=(("Authorization", "Bearer k"),))
    r = await run_async(RunSpec(target, duration=0.5, profile="constant:40"))
    assert r.ok == 20 and r.errors == {}
    no_auth = await run_async(RunSpec(replace(target, headers=()), duration=0.2,
                                      profile="constant:20"))
    assert no_auth.status == {"401": 4}
    untrusted = await run_async(RunSpec(Target(base + "/echo", method="POST"), duration=0.2,
                                        profile="constant:20"))
    assert untrusted.errors == {"connect": 4}


def _check_outputs(out):
    data = json.loads((out / "results.json").read_text())
    assert (out / "summary.md").read_text().startswith("# Load test")
    for name in ("latency_over_time.png", "throughput.png", "latency_cdf.png"):
        content = (out / name).read_bytes()
        assert content.startswith(PNG_MAGIC) and len(content) > 1000
    return data


async def test_cli_writes_results_summary_and_plots(serve, tmp_path, capsys):
    base = await serve()
    out = tmp_path / "run"
    code = await asyncio.to_thread(run_cli, [
        "run", "--url", base + "/", "--rate", "100", "--duration", "1",
        "--output", str(out), "--label", "direct"])
    assert code == 0
    data = _check_outputs(out)
    assert data["label"] == "direct" and data["requests"]["ok"] == 100
    captured = capsys.readouterr()
    assert "| latency (ms) |" in captured.out
    assert "[direct]" in captured.err and "sent" in captured.err
    assert "without a body" not in captured.err  # a GET

    # a POST without --body: said once, as a scoring script answers it with an error
    code = await asyncio.to_thread(run_cli, [
        "run", "--url", base + "/", "--method", "POST", "--rate", "20", "--duration", "0.2", "--no-plots",
        "--output", str(tmp_path / "post")])
    assert code == 1  # / takes GET only: every POST is answered 405, so the run failed
    err = capsys.readouterr().err
    assert err.count("every POST is sent without a body") == 1
    assert "no request succeeded (4 of 4 failed)" in err

    # `run` may be omitted; closed loop; --quiet: no progress
    out2 = tmp_path / "closed"
    code = await asyncio.to_thread(run_cli, [
        "--url", base + "/", "--closed-loop", "--connections", "2", "--duration", "0.5",
        "--output", str(out2), "--label", "closed", "--quiet", "--format", "json"])
    assert code == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["config"]["mode"] == "closed"
    assert captured.err == ""

    cmp_dir = tmp_path / "cmp"
    assert run_cli(["compare", str(out), str(out2), "--output", str(cmp_dir)]) == 0
    summary = _check_outputs_cmp(cmp_dir)
    assert "| direct |" in summary and "| closed |" in summary and "Δp99" in summary


@pytest.mark.parametrize("path,extra,code", [
    ("/error", [], 1),                                  # every request failed
    ("/flaky", [], 0),                                  # some succeeded: no limit given
    ("/flaky", ["--max-failure-rate", "0.4"], 1),       # 50 % > 40 %
    ("/flaky", ["--max-failure-rate", "0.5"], 0),       # 50 % is not more than 50 %
    ("/", ["--max-failure-rate", "0"], 0),
])
async def test_cli_exit_code_follows_the_failures(serve, tmp_path, capsys, path, extra, code):
    base = await serve()
    got = await asyncio.to_thread(run_cli, [
        "run", "--url", base + path, "--rate", "20", "--duration", "0.5", "--no-plots", "-q",
        "--output", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert got == code, err
    assert ("loadtests: error:" in err) == (code == 1)
    assert (tmp_path / "run" / "results.json").exists()  # written either way


def _check_outputs_cmp(out):
    for name in ("latency_over_time.png", "throughput.png", "latency_cdf.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    return (out / "summary.md").read_text()


async def test_cli_processes_merge_counts(serve, tmp_path):
    base = await serve()
    out = tmp_path / "two"
    code = await asyncio.to_thread(run_cli, [
        "run", "--url", base + "/", "--rate", "100", "--duration", "1", "--processes", "2",
        "--output", str(out), "--quiet", "--no-plots"])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["processes"] == 2
    assert data["requests"]["scheduled"] == data["requests"]["sent"] == 100
    assert data["requests"]["ok"] == 100 and data["status"] == {"200": 100}
    assert data["latency_ms"]["all"]["count"] == 100
    assert sum(s["completed"] for s in data["series"]) == 100


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "loadtests", "run", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "--closed-loop" in proc.stdout and "--processes" in proc.stdout


async def test_warmup_is_sent_but_not_recorded(serve):
    hits = []

    async def count(request):
        hits.append(1)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", count)
    base = await serve(app)
    r = await run_async(open_spec(base + "/", 100, 0.5, warmup=0.3))
    assert r.scheduled == r.sent == r.ok == 50 and r.config["warmup_s"] == 0.3
    assert len(hits) == 80
    assert sum(s["completed"] for s in r.series) == 50
    closed = await run_async(RunSpec(Target(base + "/"), duration=0.3, mode="closed",
                                     connections=2, warmup=0.2))
    assert closed.sent == closed.ok > 0
    assert len(hits) > 80 + closed.sent  # the warm-up requests went out too
