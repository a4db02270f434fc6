"""Shared fixtures: real gateways on loopback, and a guard that none is left running."""

from __future__ import annotations

import os

import pytest

from tests.support.gateway import GatewayProcess


# CI (.ci/run) installs every tool the suite drives, so a skip there is a check that did
# not run. With SCOREGATE_NO_SKIPS=1 (.ci/run sets it) a skip fails the run, except a skip
# that depends on the Python build itself (a feature this interpreter lacks).
_SKIPS_ALLOWED = ("this Python has no tarfile data filter",)
_unexpected_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("SCOREGATE_NO_SKIPS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in _SKIPS_ALLOWED):
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    if _unexpected_skips:
        terminalreporter.section("skipped checks (SCOREGATE_NO_SKIPS=1: each one fails the run)")
        for line in _unexpected_skips:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture
def make_gateway(tmp_path):
    """Start `scoregate serve` child processes; every one is stopped at teardown."""
    started: list[GatewayProcess] = []

    def make(paths=(), extra_args=(), name="state", env=None) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path / name, paths, extra_args, env)
        started.append(gateway)
        return gateway.start()

    yield make
    for gateway in started:
        gateway.kill_everything()


# -- an in-process router with real TLS in front of a recording upstream ------------------

import aiohttp  # noqa: E402

from router import RouterApp, RouterSettings, RoutingTableHolder  # noqa: E402
from tests.fakes.recording_upstream import RecordingUpstream  # noqa: E402
from tests.functional.router_harness import assert_idle, deployment, table  # noqa: E402
from tls import client_context, ensure_dev_certificates, server_context  # noqa: E402


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return ensure_dev_certificates(tmp_path_factory.mktemp("router-tls"))


@pytest.fixture
async def upstream():
    server = await RecordingUpstream().start()
    yield server
    await server.close()


@pytest.fixture
async def make_router(certs, upstream):
    """make_router(initial_table=None, app=None, **RouterSettings fields), `app`: RouterApp
    keywords (e.g. extra_routes); each router is checked on teardown: nothing in flight,
    nobody queued."""
    routers = []

    async def make(initial=None, app: dict | None = None, **settings) -> RouterApp:
        initial = initial or table(deployment("blue", [upstream.port], max_concurrent_requests_per_instance=64))
        router = RouterApp(RouterSettings(port=0, ssl_context=server_context(certs.cert, certs.key), **settings),
                           RoutingTableHolder(initial), **(app or {}))
        await router.start()
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.drain(2)
        assert_idle(router)
        await router.close()


@pytest.fixture
async def client(certs):
    connector = aiohttp.TCPConnector(ssl=client_context(certs.ca_cert), limit=200)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield session
