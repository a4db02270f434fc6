"""An optional plain-HTTP listener whose only job is to send clients to HTTPS.

Scoring never happens over plain HTTP: every well-formed request, whatever its method
or path, gets `308 Permanent Redirect` to the same path and query on the HTTPS port. 308
(not 301/302) makes clients repeat a POST as a POST with its body, instead of
turning it into a GET. Nothing is read from the request but its Host header, which
is checked so the redirect cannot be pointed at a crafted location.
"""

from __future__ import annotations

import re

from aiohttp import web

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]\Z")
_PORT = re.compile(r":[0-9]{1,5}$")


def redirect_app(https_port: int, *, default_host: str | None = None) -> web.Application:
    """An aiohttp app answering 308 to `https://<host>:<https_port><path>?<query>`.

    `<host>` is the request's Host header without its port; requests without one
    (HTTP/1.0) go to `default_host`, or get 400 if it is not set.
    """
    if not 0 < https_port < 65536:
        raise ValueError(f"https_port out of range: {https_port}")
    port = "" if https_port == 443 else f":{https_port}"

    @web.middleware
    async def redirect(request: web.Request, handler) -> web.Response:
        host = _host_only(request.headers.get("Host", "")) or default_host
        if host is None or not (_HOSTNAME.match(host) or _IPV6.match(host)):
            response = web.json_response(
                {"code": "BadRequest", "message": "missing or invalid Host header; use HTTPS"},
                status=400,
            )
            response.force_close()
            return response
        target = request.rel_url.raw_path_qs  # origin form even for absolute-form requests
        location = f"https://{host}{port}{target if target.startswith('/') else '/'}"
        response = web.Response(
            status=308, headers={"Location": location, "Cache-Control": "no-store"},
            text=f"Use HTTPS: {location}\n",
        )
        response.force_close()  # nothing more to say on plain HTTP
        return response

    # A middleware, not a route: routes see the decoded path, and one with a CR or LF in
    # it, or `*`, matched none (a 404); every well-formed request gets its 308.
    return web.Application(middlewares=[redirect])


def _host_only(header: str) -> str:
    host = header.strip()
    if _PORT.search(host) and (not host.startswith("[") or "]:" in host):
        host = host[: host.rindex(":")]
    return host
