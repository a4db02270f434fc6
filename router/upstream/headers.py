"""Header rules between the caller and a replica: hop-by-hop, credentials, forwarding.

Used by router.upstream.forward in both directions. Hop-by-hop headers describe one
connection, never the message, so a proxy must drop them and every header the
`Connection` header names (RFC 9110 §7.6.1).
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
# Not forwarded upstream on top of hop-by-hop: the gateway's own credential, and
# headers the client library sets itself from the new message.
# `Expect` too: the gateway's server already answered the caller's 100-continue.
_DROP_UPSTREAM = HOP_BY_HOP | {"authorization", "host", "content-length", "x-forwarded-for",
                               "x-forwarded-proto", "x-forwarded-host", "x-request-id", "traceparent",
                               "expect"}
# Not returned to the caller: set by our own server for the new message.
_DROP_DOWNSTREAM = HOP_BY_HOP | {"content-length", "date", "server"}
_DROP_DOWNSTREAM_RAW = frozenset(name.encode() for name in _DROP_DOWNSTREAM)


def _connection_listed(headers: CIMultiDictProxy) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        for name in value.split(","):
            name = name.strip().lower()
            if name:
                listed.add(name)
    return listed


def _forwardable(headers: CIMultiDictProxy):
    """(name, value) of the caller's headers that may go to the model."""
    listed = _connection_listed(headers) if "Connection" in headers else ()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _DROP_UPSTREAM or lower in listed:
            continue
        yield name, value


def _added(headers: CIMultiDictProxy, request_id: str, client_ip: str | None, scheme: str,
           traceparent: str | None, trust_forwarded: bool):
    """The headers the gateway sets. A caller's own X-Forwarded-For is kept (and appended
    to) only when the caller is a trusted proxy; otherwise it is replaced by the caller's
    address, so nobody can pose as another client."""
    prior = headers.get("X-Forwarded-For") if trust_forwarded else None
    if client_ip:
        yield "X-Forwarded-For", f"{prior}, {client_ip}" if prior else client_ip
    elif prior:
        yield "X-Forwarded-For", prior
    yield "X-Forwarded-Proto", scheme
    yield "x-request-id", request_id
    if traceparent:
        yield "traceparent", traceparent


def upstream_request_headers(
    headers: CIMultiDictProxy, *, request_id: str, client_ip: str | None, scheme: str,
    traceparent: str | None = None, trust_forwarded: bool = False,
) -> CIMultiDict:
    """Headers for the model, as a multidict (mirrored copies go through aiohttp)."""
    out: CIMultiDict = CIMultiDict(_forwardable(headers))
    for name, value in _added(headers, request_id, client_ip, scheme, traceparent, trust_forwarded):
        out[name] = value
    return out


def upstream_request_head(
    method: str, target: str, authority: str, headers: CIMultiDictProxy, framing: str, *,
    request_id: str, client_ip: str | None, scheme: str, traceparent: str | None = None,
    trust_forwarded: bool = False,
) -> bytes:
    """The request line and headers for the model as bytes, in one pass: the same headers
    as upstream_request_headers(). `framing` is the Content-Length or Transfer-Encoding
    line (or ""). Values came through our server's parser, which refuses CR, LF and NUL
    in them, and the gateway's own values are checked where they are made, so nothing
    here can split a header."""
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"]
    for name, value in _forwardable(headers):
        parts.append(f"{name}: {value}\r\n")
    for name, value in _added(headers, request_id, client_ip, scheme, traceparent, trust_forwarded):
        parts.append(f"{name}: {value}\r\n")
    parts.append(framing)
    parts.append("\r\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


def downstream_response_headers(headers: CIMultiDictProxy) -> CIMultiDict:
    listed = _connection_listed(headers)
    out: CIMultiDict = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _DROP_DOWNSTREAM or lower in listed:
            continue
        out.add(name, value)
    return out


def downstream_headers_from_raw(raw: list[tuple[bytes, bytes]]) -> CIMultiDict:
    """downstream_response_headers() for the (name, value) byte pairs of the upstream
    connection's parser. Header bytes are octets (RFC 9110 §5.5): decoded as latin-1,
    which maps every byte and never fails."""
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(part.strip().lower() for part in value.split(b",") if part.strip())
    out: CIMultiDict = CIMultiDict()
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_DOWNSTREAM_RAW or lower in listed:
            continue
        out.add(name.decode("latin-1"), value.decode("latin-1"))
    return out
