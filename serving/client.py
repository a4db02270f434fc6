"""The CLI's side of the admin API: find the gateway in the state dir and call it.

Synchronous urllib on purpose: a CLI verb makes one or two calls, and importing an
async HTTP stack would cost more start-up time than the calls themselves.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .statedir import GatewayInfo, StateDir

TIMEOUT_S = 60.0


def api_path(*segments: str) -> str:
    """An admin API path from its segments, each percent-encoded whole: a name holding '/',
    '?' or '#' stays one segment (an unknown name, a 404) and cannot reach another resource."""
    return "".join("/" + urllib.parse.quote(str(segment), safe="") for segment in segments)


# The CLI's exit codes: 0 ok, 1 failed, 2 bad input, 3 no gateway running, and this: a
# --wait (apply, batch invoke) stopped waiting for work that goes on, which a script must
# tell from a failure.
EXIT_STILL_RUNNING = 4

# The gateway's answers that refuse what was asked, as it was asked: invalid (400, 413,
# 422) or against a rule given what is stored (409: a deployment that carries traffic
# scaled to 0 or deleted, a finished job canceled). Nothing changed; the command must
# change first. Exit 2, as a bad flag or YAML file is: `endpoint update` refused for a
# traffic rule (a 400 of the apply it makes) and `deployment scale` refused for the same
# rule (a 409) exit alike. Any other error (404: nothing of that name; 5xx) is a failure, 1.
REFUSED_STATUSES = frozenset({400, 409, 413, 422})


def exit_code_of(status: int) -> int:
    """The CLI's exit code for an error answer of the gateway (admin or scoring port)."""
    return 2 if status in REFUSED_STATUSES else 1


class CliError(Exception):
    """A failed verb: `message` goes to stderr; `result`, when given, is still printed
    (e.g. `apply --wait` shows every deployment's outcome, then fails)."""

    def __init__(self, message: str, exit_code: int = 1, result=None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result


class GatewayNotRunning(CliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 3)


class AdminClient:
    def __init__(self, info: GatewayInfo) -> None:
        self.info = info

    @classmethod
    def from_state_dir(cls, root: Path) -> "AdminClient":
        info = StateDir(root).read_gateway()
        if info is None:
            raise GatewayNotRunning(
                f"no running gateway found in {root} (start one with `scoregate serve`,"
                " or point --state-dir / SCOREGATE_STATE_DIR at its state dir)")
        return cls(info)

    def _call(self, method: str, path: str, body: dict | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.info.admin_url}/api/v1{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.info.admin_token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = json.loads(payload).get("message", payload.decode(errors="replace"))
            except ValueError:
                message = payload.decode(errors="replace")
            raise CliError(message, exit_code_of(exc.code)) from None
        except urllib.error.URLError as exc:
            raise GatewayNotRunning(
                f"the gateway at {self.info.admin_url} does not answer ({exc.reason})") from None

    def get(self, path: str):
        return json.loads(self._call("GET", path))

    def get_text(self, path: str) -> str:
        return self._call("GET", path).decode("utf-8", errors="replace")

    def post(self, path: str, body: dict):
        return json.loads(self._call("POST", path, body))

    def delete(self, path: str):
        return json.loads(self._call("DELETE", path))


def gateway_tls(info: GatewayInfo) -> ssl.SSLContext:
    """How the CLI trusts its own gateway's HTTPS port (the scoring URL of gateway.json).

    With the development certificate: its CA. With the user's own certificate: exactly
    that certificate, the first of the chain file the gateway was given, and not the
    name in it. The CLI calls 127.0.0.1, which a certificate for `scoring.example.com`
    does not name, and may not know the CA that signed it. The certificate itself
    identifies the gateway well enough: any other one is refused. It is read at each
    call, so a rotated file is trusted once the gateway has loaded it. A gateway.json
    written before `server_cert` existed gets the system's CAs, as before."""
    if info.ca_cert or not info.server_cert:
        return ssl.create_default_context(cafile=info.ca_cert or None)
    from cryptography.hazmat.primitives.serialization import Encoding  # imported here: only this case

    from tls.errors import TLSConfigError
    from tls.pem import load_certificates

    try:
        leaf = load_certificates(info.server_cert)[0].public_bytes(Encoding.PEM).decode("ascii")
    except TLSConfigError as exc:  # the file moved or broke since the gateway loaded it
        raise CliError(f"cannot check the gateway's certificate: {exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the exact certificate is checked instead of a name
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a trusted certificate that is not a CA's
    context.load_verify_locations(cadata=leaf)
    return context


def score_request(info: GatewayInfo, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST to the scoring URL over HTTPS, trusting the gateway (gateway_tls); (status, text)."""
    context = gateway_tls(info)
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", errors="replace")
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach {url}: {exc.reason}") from None
