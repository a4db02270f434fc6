"""The status page on the admin port: `GET /`, `GET /status.json`, static assets.

Read-only, and behind the admin token. A browser cannot send `Authorization: Bearer`
when someone types a URL, so there is a small login: `GET /?token=T` or the form's
`POST /login` checks the token and sets a session cookie (HttpOnly, SameSite=Strict,
Path=/), then redirects to `/` so the token leaves the address bar. The cookie holds
an HMAC of the admin token, never the token itself: it opens the status routes and
nothing else (the management API under /api/ still wants the bearer token), and it
stops working when the gateway restarts with a new token. Every status route also
takes `Authorization: Bearer <admin token>`, for scripts.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from importlib import resources
from typing import Awaitable, Callable

from aiohttp import web

from .render import login_page, page, sections

COOKIE = "scoregate_status"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the login URL may carry ?token=
    "Cache-Control": "no-store",
}
ASSETS = {"status.js": "text/javascript", "linechart.js": "text/javascript", "status.css": "text/css"}
# Inline rather than a file: the package data rules ship *.js/*.css/*.html/*.json only.
FAVICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           b'fill="#1d2330"/><polyline points="2,12 6,7 9,9 14,3" fill="none" stroke="#9ae6b4" '
           b'stroke-width="2"/></svg>')

SnapshotSource = Callable[[], "dict | Awaitable[dict]"]


class StatusPage:
    def __init__(self, snapshot: SnapshotSource, *, admin_token: str, refresh_s: float = 2.0) -> None:
        self._snapshot = snapshot
        self._token = admin_token.encode()
        self._session = hmac.new(self._token, b"scoregate status session v1", hashlib.sha256).hexdigest()
        self.refresh_ms = int(refresh_s * 1000)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.index),
            web.post("/login", self.login),
            web.post("/logout", self.logout),
            web.get("/status.json", self.status_json),
            web.get("/static/status/{name}", self.asset),
        ]

    # -- authentication -----------------------------------------------------------------------
    def _token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return self._token_ok(header[7:])
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    def _signed_in(self, location: str = "/") -> web.Response:
        response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})
        response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        return response

    @staticmethod
    def _login(message: str = "", status: int = 401) -> web.Response:
        return web.Response(text=login_page(message), status=status, content_type="text/html",
                            headers=SECURITY_HEADERS)

    # -- handlers ---------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query:
            if self._token_ok(request.query["token"]):
                return self._signed_in()
            return self._login("That is not the admin token.")
        if not self.authorized(request):
            return self._login()
        snapshot = await self._take()
        return web.Response(text=page(snapshot, refresh_ms=self.refresh_ms, json_url="/status.json?view=page"),
                            content_type="text/html", headers=SECURITY_HEADERS)

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if self._token_ok(str(form.get("token", ""))):
            return self._signed_in()
        return self._login("That is not the admin token.")

    async def logout(self, _request: web.Request) -> web.StreamResponse:
        response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def status_json(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({"code": "Unauthorized", "message": "sign in at / or send the admin token"},
                                     status=401, headers=SECURITY_HEADERS)
        snapshot = await self._take()
        if request.query.get("view") == "page":
            return web.json_response({"snapshot": snapshot, "html": sections(snapshot)}, headers=SECURITY_HEADERS)
        return web.json_response(snapshot, headers=SECURITY_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "favicon.svg":
            return web.Response(body=FAVICON, content_type="image/svg+xml")
        if name not in ASSETS:
            raise web.HTTPNotFound()
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=ASSETS[name],
                            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    async def _take(self) -> dict:
        result = self._snapshot()
        return await result if inspect.isawaitable(result) else result
