"""Signed, expiring tokens for endpoints with `auth_mode: aml_token`.

    sgt1.<base64url(JSON {"ep": endpoint, "exp": unix seconds})>.<base64url(HMAC-SHA256)>

The secret lives in the store (created on first use), so tokens survive a gateway
restart and every router that shares the store accepts them. The router checks them on
the hot path with one HMAC and a constant-time comparison: the signature, then the
expiry, then that the token was issued for this very endpoint (its audience).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Callable

import orjson

PREFIX = b"sgt1."
DEFAULT_LIFETIME_S = 3600
MAX_LIFETIME_S = 24 * 3600


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


class TokenIssuer:
    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"scoregate aml_token|" + secret.encode()).digest()
        self._clock = clock

    def issue(self, endpoint: str, lifetime_s: float = DEFAULT_LIFETIME_S) -> dict:
        now = self._clock()
        expiry = int(now + lifetime_s)
        payload = _b64(orjson.dumps({"ep": endpoint, "exp": expiry}))
        token = PREFIX + payload + b"." + _b64(self._sign(payload))
        return {"accessToken": token.decode(), "tokenType": "Bearer", "expiryTimeUtc": expiry,
                "refreshAfterTimeUtc": int(now + lifetime_s / 2)}

    def verify(self, endpoint: str, credential: bytes) -> bool:
        if not credential.startswith(PREFIX) or len(credential) > 1024:
            return False
        payload, _, signature = credential[len(PREFIX):].partition(b".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                return False
            claims = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            return False
        return (isinstance(claims, dict) and isinstance(claims.get("exp"), int)
                and claims["exp"] > self._clock() and claims.get("ep") == endpoint)

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()
