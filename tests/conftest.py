"""Shared fixtures: real gateways on loopback, and a guard that none is left running."""

from __future__ import annotations

import pytest

from tests.support.gateway import GatewayProcess


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
