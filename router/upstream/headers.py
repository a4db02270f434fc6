"""Header rules between the caller and a replica: hop-by-hop, credentials, forwarding.

Used by router.upstream.forward in both directions. Hop-by-hop headers describe one
connection, never the message, so a proxy must drop them and every header the
`Connection` header names (RFC 9110 §7.6.1).
"""

from __future__ import annotations

from multidict import CIMultiDict

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
# Not returned to the caller: set by our own server for the new message, and the headers
# the gateway sets on every answer (router.upstream.forward): a model that echoes the
# request id (most do) would otherwise put a second, earlier x-request-id before ours.
_GATEWAY_SET = frozenset(("x-request-id", "azureml-model-deployment", "traceparent",
                         "ms-azureml-model-error-statuscode", "ms-azureml-model-error-reason"))
_DROP_DOWNSTREAM = HOP_BY_HOP | _GATEWAY_SET | {"content-length", "date", "server"}
# Lower-case bytes, as the parsers see names. router.http1 and router.upstream.connection
# apply them as each header is parsed (a name is lower-cased once); the functions below
# apply them to whole header lists.
DROP_DOWNSTREAM_RAW = frozenset(name.encode() for name in _DROP_DOWNSTREAM)
DROP_UPSTREAM_RAW = frozenset(name.encode() for name in _DROP_UPSTREAM)


def _listed(raw: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Lower-case names the `Connection` headers of `raw` name (hop-by-hop too)."""
    listed: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            listed.update(part.strip().lower() for part in value.split(b",") if part.strip())
    return listed


def _forwardable(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(name, value) byte pairs of the caller's headers that may go to the model."""
    out = []
    connection = False
    for pair in raw:
        lower = pair[0].lower()
        if lower in DROP_UPSTREAM_RAW:
            connection = connection or lower == b"connection"
        else:
            out.append(pair)
    if connection:  # it may come after the headers it names
        listed = _listed(raw)
        out = [pair for pair in out if pair[0].lower() not in listed]
    return out


def _prior_forwarded_for(raw: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in raw:
        if name.lower() == b"x-forwarded-for":
            return value.decode("utf-8", "surrogateescape")
    return None


def _added(raw: list[tuple[bytes, bytes]], request_id: str, client_ip: str | None, scheme: str,
           traceparent: str | None, trust_forwarded: bool):
    """The headers the gateway sets. A caller's own X-Forwarded-For is kept (and appended
    to) only when the caller is a trusted proxy; otherwise it is replaced by the caller's
    address, so nobody can pose as another client."""
    prior = _prior_forwarded_for(raw) if trust_forwarded else None
    if client_ip:
        yield "X-Forwarded-For", f"{prior}, {client_ip}" if prior else client_ip
    elif prior:
        yield "X-Forwarded-For", prior
    yield "X-Forwarded-Proto", scheme
    yield "x-request-id", request_id
    if traceparent:
        yield "traceparent", traceparent


def upstream_request_headers(
    raw: list[tuple[bytes, bytes]], *, request_id: str, client_ip: str | None, scheme: str,
    traceparent: str | None = None, trust_forwarded: bool = False,
) -> CIMultiDict:
    """Headers for the model from the caller's raw headers, as a multidict (mirrored
    copies go through aiohttp)."""
    out: CIMultiDict = CIMultiDict(
        (n.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for n, v in _forwardable(raw))
    for name, value in _added(raw, request_id, client_ip, scheme, traceparent, trust_forwarded):
        out[name] = value
    return out


def upstream_request_head(
    method: str, target: str, authority: str, raw: list[tuple[bytes, bytes]], framing: str, *,
    request_id: str, client_ip: str | None, scheme: str, traceparent: str | None = None,
    trust_forwarded: bool = False, forward_lines: list[bytes] | None = None,
) -> bytes:
    """The request line and headers for the model as bytes, in one pass: the same headers
    as upstream_request_headers(), the caller's byte for byte. `framing` is the
    Content-Length or Transfer-Encoding line (or ""). `forward_lines`: the caller's
    forwardable headers as lines, when the parser already picked them (router.http1
    does, unless a `Connection` header names others to drop). The caller's values came
    through router.http1's parser, which refuses CR, LF and NUL in them, and the
    gateway's own values are checked where they are made, so nothing here can split a
    header."""
    lines = forward_lines if forward_lines is not None else [b"%s: %s\r\n" % pair for pair in _forwardable(raw)]
    prior = _prior_forwarded_for(raw) if trust_forwarded else None
    forwarded_for = (f"{prior}, {client_ip}" if prior else client_ip) if client_ip else prior
    own = (f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else "") + \
        f"X-Forwarded-Proto: {scheme}\r\nx-request-id: {request_id}\r\n" + \
        (f"traceparent: {traceparent}\r\n" if traceparent else "")
    return b"%s%s%s" % (f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n".encode("utf-8", "surrogateescape"),
                        b"".join(lines), f"{own}{framing}\r\n".encode("utf-8", "surrogateescape"))


def downstream_header_lines(raw: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The model's answer headers that go back to the caller, as "Name: value\r\n" lines
    of the bytes the replica sent (the connection's parser refuses CR, LF and NUL)."""
    listed = _listed(raw)
    return [b"%s: %s\r\n" % (name, value) for name, value in raw
            if (lower := name.lower()) not in DROP_DOWNSTREAM_RAW and lower not in listed]
