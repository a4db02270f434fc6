"""An optional plain-HTTP listener whose only job is to send clients to HTTPS.

Scoring never happens over plain HTTP: every well-formed request, whatever its method
or path, gets `308 Permanent Redirect` to the same path and query on the HTTPS port. 308
(not 301/302) makes clients repeat a POST as a POST with its body, instead of
turning it into a GET. Nothing is read from the request but its Host header.

The redirect goes only to a name of this gateway: the Host is kept when it is one of
`host_names` (the serving certificates' names, `*.domain` wildcards included, and
their IP addresses) or `default_host`; any other Host is a 400. Reflecting any Host
(nginx's `return 301 https://$host$request_uri`) would let a crafted Host point the
redirect at another site (an open redirect, or a poisoned shared cache); and a name the
certificates do not hold could not be served over HTTPS anyway.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable, Iterable

import orjson
from aiohttp import web

_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]\Z")
_PORT = re.compile(r":[0-9]{1,5}$")


class HostNames:
    """Names a Host may be: exact names, `*.parent` wildcards (one label, as a
    certificate's) and IP addresses; compared without case."""

    __slots__ = ("_exact", "_parents", "_addresses")

    def __init__(self, names: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._parents: set[str] = set()
        self._addresses: set = set()
        for name in names:
            name = name.strip().lower().rstrip(".")
            address = _address(name)
            if address is not None:
                self._addresses.add(address)
            elif name.startswith("*."):
                self._parents.add(name[2:])
            elif name:
                self._exact.add(name)

    def __contains__(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in self._exact:
            return True
        address = _address(host)
        if address is not None:
            return address in self._addresses
        first, dot, parent = host.partition(".")
        return bool(dot and first and parent in self._parents)


def certificate_names(server_tls) -> Callable[[], HostNames]:
    """The names (DNS and IP subjectAltNames) of the certificates `server_tls`
    (tls.ServerTLS) serves right now: read again after a rotation, once per set."""
    cache: list = [None, HostNames(())]

    def names() -> HostNames:
        certs = server_tls.certificates
        if cache[0] is not certs:
            cache[:] = [certs, HostNames(name for cert in certs for name in (*cert.dns_names(), *cert.ip_addresses()))]
        return cache[1]

    return names


def redirect_app(https_port: int, *, default_host: str | None = None,
                 host_names: Iterable[str] | Callable[[], HostNames] | None = None) -> web.Application:
    """An aiohttp app answering 308 to `https://<host>:<https_port><path>?<query>`.

    `<host>` is the request's Host header without its port, when it is `default_host` or
    one of `host_names` (a collection, or a callable giving the current one: see
    certificate_names); any other Host is a 400. Requests without one (HTTP/1.0) go to
    `default_host`, or get 400 if it is not set.
    """
    if not 0 < https_port < 65536:
        raise ValueError(f"https_port out of range: {https_port}")
    port = "" if https_port == 443 else f":{https_port}"
    configured = HostNames([default_host.strip("[]")] if default_host else [])
    if callable(host_names):
        names_now = host_names
    else:
        fixed = HostNames(host_names or ())
        names_now = lambda: fixed  # noqa: E731

    def known(host: str) -> bool:
        return host in configured or host in names_now()

    @web.middleware
    async def redirect(request: web.Request, handler) -> web.Response:
        header = _host_only(request.headers.get("Host", ""))
        host = header or default_host
        if host is None or not (_HOSTNAME.match(host) or _IPV6.match(host)):
            return _refusal("missing or invalid Host header; use HTTPS")
        if header and not known(header.strip("[]")):
            return _refusal(f"{header[:100]} is not a name of this gateway; use HTTPS with one of its names")
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


def _refusal(message: str) -> web.Response:
    request_id = str(uuid.uuid4())
    response = web.Response(status=400, content_type="application/json", headers={"x-request-id": request_id},
                            body=orjson.dumps({"code": "BadRequest", "message": message, "request_id": request_id}))
    response.force_close()
    return response


def _address(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _host_only(header: str) -> str:
    host = header.strip()
    if _PORT.search(host) and (not host.startswith("[") or "]:" in host):
        host = host[: host.rindex(":")]
    return host
