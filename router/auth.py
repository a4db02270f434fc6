"""Authenticate: check the caller's credential against the endpoint's auth mode.

Comes after the endpoint lookup in router.pipeline and before the deployment is picked,
so an unauthenticated caller learns nothing about deployments. Keys are compared in
constant time, against every key of the endpoint (no early exit on the first match),
so neither the position of a wrong byte nor which key matched shows in the timing.
"""

from __future__ import annotations

import hmac

from .errors import Unauthorized
from .routing_table import EndpointRoute

_BEARER = b"bearer "


def bearer_credential(authorization: bytes | str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value (the scheme in any case), as
    bytes; None when there is none. The data path passes the raw header bytes."""
    if not authorization or len(authorization) > 4096:
        return None
    if isinstance(authorization, str):
        authorization = authorization.encode("utf-8", "surrogateescape")
    if authorization[:7].lower() != _BEARER:
        return None
    return authorization[7:].strip() or None


class KeyAuthenticator:
    """auth_mode key: `Authorization: Bearer <primary or secondary key>`; none: open.

    aml_token (signed, expiring tokens) is verified by a TokenVerifier passed in, when
    the control plane provides one; without it such endpoints refuse every caller.
    """

    __slots__ = ("_token_verifier",)

    def __init__(self, token_verifier=None) -> None:
        self._token_verifier = token_verifier

    def check(self, endpoint: EndpointRoute, authorization: bytes | str | None) -> None:
        mode = endpoint.auth_mode
        if mode == "none":
            return
        credential = bearer_credential(authorization)
        if credential is None:
            raise Unauthorized("missing credential: send 'Authorization: Bearer <key>'")
        if mode == "key":
            matched = False
            for key in endpoint.key_bytes:
                matched |= hmac.compare_digest(credential, key)
            if matched:
                return
            raise Unauthorized("the key is not valid for this endpoint")
        if mode == "aml_token" and self._token_verifier is not None:
            if self._token_verifier(endpoint.name, credential):
                return
            raise Unauthorized("the token is not valid for this endpoint or has expired")
        raise Unauthorized("the credential is not valid for this endpoint")
