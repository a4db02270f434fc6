"""HTTPS clients that trust a test gateway's development CA."""

from __future__ import annotations

import asyncio

import aiohttp

from tls import client_context


def scoring_session(ca_cert: str, *, connections: int = 16) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=client_context(ca_cert), limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def open_raw_tls(port: int, ca_cert) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to a test router on 127.0.0.1 for raw bytes (what client
    libraries would rewrite or refuse to send)."""
    return await asyncio.open_connection("127.0.0.1", port, ssl=client_context(str(ca_cert)),
                                         server_hostname="localhost")
