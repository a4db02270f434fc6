"""aiohttp's server as our ports need it: the admin port, the HTTP→HTTPS redirect, the
batch routes handed over on the scoring port and the standalone batch service.

Why: aiohttp refuses a malformed request (no Host, two Content-Lengths, a negative
one...) in its parser, before any middleware, and then logged `ERROR aiohttp.server:
Error handling request` with a full traceback — any client could fill the log with
them — and answered a text/plain 400 without a request id. `app_runner(app)` is
`web.AppRunner(app)` with, instead:
- a malformed request logged as one short DEBUG line (scoregate.aiohttp; like the
  scoring port's refusals: a client's mistake is not the gateway's error), answered
  400 `{code, message, request_id}` with `x-request-id`, the connection closed;
- a handler failure no middleware caught: a JSON 500 and the traceback at ERROR (a
  defect of ours, with the id the caller sees);
- no `Server` header: aiohttp's named Python's and aiohttp's versions (a gift to anyone
  matching known vulnerabilities); the scoring port's own answers send none either;
- that 400 says `HTTP/1.1` (with `Connection: close`), as the scoring port's own
  refusals do: aiohttp answers a request it could not read as if it were HTTP/1.0 (the
  placeholder request it makes for the error, web_protocol.ERROR), which looked like
  another server's answer on the scoring port's batch routes.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.http import HttpVersion11

from .context import request_id_from

log = logging.getLogger("scoregate.aiohttp")

REQUEST_ID_HEADER = "x-request-id"
_MAX_REASON = 120


def app_runner(app: web.Application, **kwargs) -> web.AppRunner:
    """A runner for `app` (not started yet); `kwargs` as web.AppRunner takes them."""
    app.on_response_prepare.append(_drop_server_header)
    return _AppRunner(app, **kwargs)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp sets its default Server (its version and Python's) before this signal.
    response.headers.popall("Server", None)


class _ErrorResponse(web.Response):
    """The answer to a request no route saw: the app's on_response_prepare does not run
    for it, so it drops Server itself."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


class _RequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with our handle_error (the only thing changed)."""

    __slots__ = ()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        try:
            return self._json_error(request, status, exc, message)
        except ConnectionError:
            raise
        except Exception:  # an aiohttp whose internals differ: its own answer, not none
            log.debug("falling back to aiohttp's error answer", exc_info=True)
            return super().handle_error(request, status, exc, message)

    def _json_error(self, request, status: int, exc: BaseException | None, message: str | None) -> web.StreamResponse:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        if status == 500 and exc is not None:
            log.error("request %s (%s %s) failed", request_id, request.method, request.path, exc_info=exc)
            code, text = "InternalError", "the gateway failed to handle the request"
        elif status < 500:
            text = f"malformed request: {short_reason(message or exc)}"
            log.debug("refused a request from %s: %s", request.remote, text)
            code = "BadRequest" if status == 400 else "RequestRefused"
        else:  # 504: a handler timed out
            code, text = "GatewayTimeout", "the gateway timed out handling the request"
            log.warning("request %s (%s %s): %s", request_id, request.method, request.path, text)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed")
        response = _ErrorResponse(status=status, content_type="application/json",
                                  body=orjson.dumps({"code": code, "message": text, "request_id": request_id}),
                                  headers={REQUEST_ID_HEADER: request_id})
        response.force_close()
        return response


def short_reason(error: BaseException | str | None) -> str:
    """aiohttp's reason without the request bytes it quotes (its lines after the first):
    one line, printable, bounded — it goes into the log and the answer."""
    lines = str(error or "").splitlines()
    first = "".join(c for c in (lines[0] if lines else "") if c.isprintable())
    return first.strip().rstrip(":.")[:_MAX_REASON] or "unreadable request"


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same server; only the protocol it makes differs. These are aiohttp internals
        # (tests/unit/router/test_aiohttp_hardening.py checks them): an aiohttp where they
        # differ keeps its own error answers rather than failing to serve.
        if type(server) is web.Server and hasattr(server, "_kwargs") and hasattr(server, "_loop"):
            server.__class__ = _Server
            server.request_factory = _unread_request_as_http11(server.request_factory)
        else:
            log.warning("aiohttp %s: malformed requests keep aiohttp's own answers", aiohttp_version)
        return server


def _unread_request_as_http11(factory):
    """`factory` (web.Server's request_factory), with the placeholder message aiohttp gives
    a request it could not read made HTTP/1.1: the refusal's status line then says
    HTTP/1.1 and it carries `Connection: close`. Without that placeholder (another aiohttp),
    nothing changes."""
    from aiohttp import web_protocol

    unread = getattr(web_protocol, "ERROR", None)
    if unread is None or not hasattr(unread, "_replace") or getattr(unread, "version", None) == HttpVersion11:
        return factory
    as_http11 = unread._replace(version=HttpVersion11)

    def make_request(message, *args, **kwargs):
        return factory(as_http11 if message is unread else message, *args, **kwargs)

    return make_request
