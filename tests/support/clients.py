"""HTTPS clients that trust a test gateway's development CA."""

from __future__ import annotations

import aiohttp

from tls import client_context


def scoring_session(ca_cert: str, *, connections: int = 16) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=client_context(ca_cert), limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))
