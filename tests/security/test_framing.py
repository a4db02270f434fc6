"""Request smuggling and desync attempts: refused with 400 (JSON) and the connection
closed; the model never sees a second, smuggled request."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.functional.router_harness import AUTH

KEY = AUTH["Authorization"].encode()
HEAD = b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + KEY + b"\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"

ATTACKS = {
    "content-length and transfer-encoding": HEAD + b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"0\r\n\r\n" + SMUGGLED,
    "transfer-encoding then content-length": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                                             b"0\r\n\r\n" + SMUGGLED,
    "duplicate content-length": HEAD + b"Content-Length: 2\r\nContent-Length: 45\r\n\r\n{}" + SMUGGLED,
    "conflicting content-length list": HEAD + b"Content-Length: 2, 45\r\n\r\n{}" + SMUGGLED,
    "obfuscated transfer-encoding": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "transfer-encoding with space": HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "unknown transfer-encoding": HEAD + b"Transfer-Encoding: gzip, chunked, identity\r\n\r\n0\r\n\r\n",
    "malformed chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk size overflow": HEAD + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
    "bad chunk extension": HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;ext=\"x\r\n{}\r\n0\r\n\r\n",
    "bare LF line endings": b"POST /api/v1/endpoint/ep/score HTTP/1.1\nHost: localhost\nContent-Length: 2\n\n{}",
    "obsolete header folding": HEAD + b"X-Folded: a\r\n  b\r\nContent-Length: 2\r\n\r\n{}",
    "NUL in a header value": HEAD + b"X-Bad: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "CR in a header value": HEAD + b"X-Bad: a\rb\r\nContent-Length: 2\r\n\r\n{}",
    "LF in a header value": HEAD + b"X-Bad: a\nX-Injected: b\r\nContent-Length: 2\r\n\r\n{}",
    "non-token method": b"PO(ST /api/v1/endpoint/ep/score HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "space before the colon": HEAD + b"Content-Length : 2\r\n\r\n{}",
    "negative content-length": HEAD + b"Content-Length: -1\r\n\r\n",
    "signed content-length": HEAD + b"Content-Length: +2\r\n\r\n{}",
    "HTTP/1.1 without Host": b"POST /api/v1/endpoint/ep/score HTTP/1.1\r\nAuthorization: " + KEY
                             + b"\r\nContent-Length: 2\r\n\r\n{}",
    "transfer-encoding in HTTP/1.0": b"POST /api/v1/endpoint/ep/score HTTP/1.0\r\nHost: localhost\r\nAuthorization: "
                                     + KEY + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("payload", ATTACKS.values(), ids=ATTACKS.keys())
async def test_refused_with_400_and_closed(make_router, upstream, raw, payload):
    router = await make_router()
    received, closed = await raw(router).exchange(payload)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), received[:200]
    assert closed
    error = json.loads(body)
    assert error["code"] == "BadRequest" and error["request_id"]
    assert not any("smuggled" in s.path_qs for s in upstream.seen)
    assert upstream.seen == [] or all(s.path_qs == "/score" for s in upstream.seen)


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])  # (llhttp itself refuses 1.2, 9.9)
async def test_versions_other_than_1_1_and_1_0_are_refused(make_router, upstream, raw, version):
    """llhttp parses any HTTP/x.y line as it would HTTP/1.1; the gateway speaks 1.1 and 1.0."""
    router = await make_router()
    received, closed = await raw(router).exchange(
        b"POST /api/v1/endpoint/ep/score HTTP/" + version + b"\r\nHost: localhost\r\nAuthorization: " + KEY
        + b"\r\nContent-Length: 2\r\n\r\n{}")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505") and closed, received[:200]
    assert json.loads(body)["code"] == "HttpVersionNotSupported"
    assert upstream.seen == []


async def test_what_reaches_the_model_is_reframed(make_router, upstream, raw):
    """A valid chunked body arrives at the model as a body the gateway framed itself."""
    router = await make_router()
    payload = HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n"
    received, _ = await raw(router).exchange(payload, timeout_s=2)
    assert received.startswith(b"HTTP/1.1 200")
    [seen] = upstream.seen
    assert seen.body == b"{}"
    assert seen.header("Transfer-Encoding") in (None, "chunked")
    assert seen.header("Authorization") is None


async def test_the_gateway_stays_healthy_after_the_attacks(make_router, upstream, raw):
    router = await make_router()
    for payload in ATTACKS.values():
        await raw(router).exchange(payload, timeout_s=2)
    received, _ = await raw(router).exchange(HEAD + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert received.startswith(b"HTTP/1.1 200")
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_connection_refusals_total", {"reason": "http_400"}) >= len(ATTACKS) - 1


async def test_a_body_malformed_after_its_handler_started_is_answered_and_logged_400(make_router, upstream, raw,
                                                                                      tmp_path):
    """The caller gets the 400, and the access log and the request metric say 400 too —
    not 499, as if the caller had left."""
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path))
    reader, writer = await raw(router).open()
    writer.write(HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    await asyncio.sleep(0.3)  # the handler runs: the body streams to the model as it comes
    writer.write(b"zz\r\n}\r\n0\r\n\r\n")
    async with asyncio.timeout(5):
        received = await reader.read()
    writer.close()
    assert received.startswith(b"HTTP/1.1 400 "), received[:200]
    error = json.loads(received.partition(b"\r\n\r\n")[2])
    await router.access_log.close()
    [line] = [json.loads(text) for text in path.read_text().splitlines()]
    assert (line["status"], line["code"]) == (400, "BadRequest")
    assert line["request_id"] == error["request_id"]  # one id for the answer and its log line
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_requests_total", {"endpoint": "ep", "deployment": "blue", "status": "400",
                                              "code": "BadRequest"}) == 1
    assert value("scoregate_requests_total", {"endpoint": "ep", "deployment": "blue", "status": "499",
                                              "code": "ClientClosedRequest"}) is None


async def test_refusals_before_any_handler_are_logged_and_counted_with_their_request_id(make_router, upstream, raw,
                                                                                        tmp_path):
    """A 400/431/505 made by the connection itself (no handler saw the request) reached the
    caller with a request id that no access-log line and no scoregate_requests_total count
    had: an operator could not find what a caller reported."""
    path = tmp_path / "access.log"
    router = await make_router(access_log=str(path))
    payloads = {400: ATTACKS["duplicate content-length"],
                431: HEAD + b"X-Big: " + b"a" * 9000 + b"\r\nContent-Length: 2\r\n\r\n{}",
                505: HEAD.replace(b"HTTP/1.1", b"HTTP/2.0") + b"Content-Length: 2\r\n\r\n{}"}
    ids = {}
    for status, payload in payloads.items():
        received, _ = await raw(router).exchange(payload)
        assert received.startswith(b"HTTP/1.1 %d" % status), received[:100]
        ids[status] = json.loads(received.partition(b"\r\n\r\n")[2])["request_id"]
    await router.access_log.close()
    lines = {line["request_id"]: line for line in map(json.loads, path.read_text().splitlines())}
    assert set(lines) == set(ids.values())  # one line each, nothing else
    for status, request_id in ids.items():
        line = lines[request_id]
        assert (line["status"], line["endpoint"], line["method"], line["path"]) == (status, None, "-", "-")
        assert line["client"] == "127.0.0.1" and line["bytes_out"] > 0
    value = router.recorder.registry.get_sample_value
    assert value("scoregate_requests_total", {"endpoint": "-", "deployment": "-", "status": "431",
                                              "code": "RequestHeaderFieldsTooLarge"}) == 1
