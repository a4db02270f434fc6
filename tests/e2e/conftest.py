"""Shared fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.support.gateway import GatewayProcess


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A `scoregate serve` with an empty state dir, one per test module; every process it
    started is ended at teardown. A module may define its own `gateway` instead."""
    gw = GatewayProcess(tmp_path_factory.mktemp("gw") / "state").start()
    try:
        yield gw
    finally:
        gw.kill_everything()
