"""StatusPage over real loopback HTTP: signing in with the admin token (query or form),
the session cookie's flags, bearer access, what an anonymous caller gets (nothing but
the sign-in form), escaping, and GatewayStatus's /api/v1/status token check."""

from __future__ import annotations

from http.cookies import SimpleCookie
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from serving.status import GatewayStatus, StatusPage, assemble
from serving.status.page import COOKIE

TOKEN = "admin-token-for-tests"


def snapshot(endpoint_name: str = "shop") -> dict:
    endpoint = {"name": endpoint_name, "kind": "online", "auth_mode": "key", "traffic": {"blue": 70, "green": 30},
                "mirror_traffic": {}, "scoring_uri": f"https://gw/api/v1/endpoint/{endpoint_name}/score"}
    deployments = [{"name": n, "endpoint_name": endpoint_name, "provisioning_state": "Succeeded", "version": "v1",
                    "instance_type": "small", "ready_replicas": 1, "desired_replicas": 1, "replicas": [],
                    "scale_settings": {"type": "default"}} for n in ("blue", "green")]
    return assemble([endpoint], deployments)


async def serve(app_routes) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.add_routes(app_routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def page_url():
    calls = []

    async def source():
        calls.append(1)
        return snapshot()

    runner, url = await serve(StatusPage(source, admin_token=TOKEN).routes())
    yield url
    await runner.cleanup()


async def test_anonymous_callers_get_the_sign_in_form_only(page_url):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{page_url}/") as r:
            body = await r.text()
            assert r.status == 401 and 'action="/login"' in body and "shop" not in body
        async with http.get(f"{page_url}/status.json") as r:
            assert r.status == 401 and (await r.json())["code"] == "Unauthorized"
        async with http.get(f"{page_url}/?token=wrong") as r:
            assert r.status == 401 and "not the admin token" in await r.text()
        async with http.get(f"{page_url}/status.json", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with http.get(f"{page_url}/", headers={"Cookie": f"{COOKIE}={TOKEN}"}) as r:
            assert r.status == 401  # the raw token is not a session


async def test_token_in_the_url_signs_in_with_a_strict_httponly_cookie(page_url):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{page_url}/?token={TOKEN}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            cookie = SimpleCookie(r.headers["Set-Cookie"])[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        assert cookie.value and TOKEN not in cookie.value
        headers = {"Cookie": f"{COOKIE}={cookie.value}"}
        async with http.get(f"{page_url}/", headers=headers) as r:
            html = await r.text()
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert 'class="endpoint-name">shop<' in html and "blue 70%" in html and 'data-chart="rps"' in html
            assert "<script>" not in html  # only external scripts (CSP)
        async with http.get(f"{page_url}/status.json?view=page", headers=headers) as r:
            data = await r.json()
            assert data["snapshot"]["endpoints"][0]["name"] == "shop" and "deployment-state" in data["html"]


async def test_form_login_bearer_and_logout(page_url):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{page_url}/login", data={"token": "nope"}, allow_redirects=False) as r:
            assert r.status == 401
        async with http.post(f"{page_url}/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303 and COOKIE in r.headers["Set-Cookie"]
        async with http.get(f"{page_url}/status.json", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["version"] == 1
        async with http.post(f"{page_url}/logout", allow_redirects=False) as r:
            assert r.status == 303
            expired = SimpleCookie(r.headers["Set-Cookie"])[COOKIE]
            assert expired.value == "" and expired["max-age"] == "0"


async def test_static_assets_only_by_name(page_url):
    async with aiohttp.ClientSession() as http:
        for name, kind in (("status.js", "text/javascript"), ("linechart.js", "text/javascript"),
                           ("status.css", "text/css"), ("favicon.svg", "image/svg+xml")):
            async with http.get(f"{page_url}/static/status/{name}") as r:
                assert r.status == 200 and r.content_type == kind and len(await r.read()) > 100
        for name in ("page.py", "..%2Fpage.py", "%2e%2e%2f__init__.py"):
            async with http.get(f"{page_url}/static/status/{name}") as r:
                assert r.status == 404


async def test_names_are_escaped():
    bad = '<img src=x onerror="alert(1)">'
    runner, url = await serve(StatusPage(lambda: snapshot(bad), admin_token=TOKEN).routes())  # a sync source
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                html = await r.text()
        assert r.status == 200 and bad not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    finally:
        await runner.cleanup()


async def test_api_status_route_checks_the_bearer_token():
    async def build():
        return snapshot()

    status = GatewayStatus(SimpleNamespace(), SimpleNamespace(), SimpleNamespace(), admin_token=TOKEN)
    status.snapshot = build  # the store/controller side is covered by test_status_snapshot
    runner, url = await serve(status.api_routes())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/v1/status") as r:
                assert r.status == 401
            async with http.get(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200 and (await r.json())["deployments"][1]["name"] == "green"
    finally:
        await runner.cleanup()
