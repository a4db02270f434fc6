"""serving.admin_errors on a real aiohttp server: what the e2e test cannot provoke on a
gateway — a handler that fails, and an answer its handler streams itself."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from serving.admin_errors import install


async def failing(request):
    raise RuntimeError("a defect")


async def streamed(request):
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"line 1\n")
    return response


async def plain_error(request):
    return web.json_response({"code": "Conflict", "message": "busy"}, status=409)


@pytest.fixture
async def base_url():
    app = web.Application()
    app.add_routes([web.get("/fail", failing), web.get("/stream", streamed), web.get("/conflict", plain_error)])
    install(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    await runner.cleanup()


async def test_a_failing_handler_is_a_json_500_naming_the_request(base_url, caplog):
    caplog.set_level(logging.ERROR, logger="scoregate.admin")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/fail", headers={"x-request-id": "op-9"}) as r:
            body = await r.json()
            assert r.status == 500 and r.headers["x-request-id"] == "op-9"
    assert body == {"code": "InternalError", "message": "the gateway failed to handle the request", "request_id": "op-9"}
    assert "op-9" in caplog.text and "a defect" in caplog.text  # the traceback is in the log


async def test_streamed_answers_and_handler_errors_carry_the_id(base_url):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base_url}/stream") as r:
            assert r.status == 200 and await r.read() == b"line 1\n"
            assert r.headers["x-request-id"]
        async with http.get(f"{base_url}/conflict") as r:
            body = await r.json()
            assert r.status == 409 and body["request_id"] == r.headers["x-request-id"]
            assert (body["code"], body["message"]) == ("Conflict", "busy")
