"""Fixtures shared by the functional tests."""

from __future__ import annotations

import aiohttp
import pytest


@pytest.fixture
async def http():
    """An aiohttp client session for the test, closed after it."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
