"""Per-client throttling of failed authentication.

A client that fails authentication `max_failures` times within `window_s` is refused
with 429 `AuthThrottled` for `block_s`, before its credential is even looked at —
guessing keys gets slow, and a legitimate caller elsewhere is not affected. A client is
an IPv4 address, or an IPv6 /64: one host is commonly given a whole /64 and could rotate
through it, so its addresses count together (an IPv4-mapped IPv6 address counts as its
IPv4 address). Memory is bounded: at most `max_clients` clients are tracked (the oldest
entries are dropped first).
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import Callable

from .errors import TooManyRequests


class AuthThrottled(TooManyRequests):
    code = "AuthThrottled"


_V6_KEYS: dict[str, str] = {}  # IPv6 address -> its client key (parsing one costs ~2 µs)
_V6_KEYS_MAX = 10000


def client_key(address: str | None) -> str:
    """Whom failures are counted for: the address, or for IPv6 its /64 ("2001:db8:1:2::/64")."""
    if not address:
        return "-"
    if ":" not in address:
        return address
    key = _V6_KEYS.get(address)
    if key is None:
        try:
            parsed = ipaddress.IPv6Address(address)
        except ValueError:
            key = address  # not an IP address (nothing to aggregate)
        else:
            key = str(parsed.ipv4_mapped) if parsed.ipv4_mapped is not None \
                else f"{ipaddress.IPv6Address(int(parsed) >> 64 << 64)}/64"
        if len(_V6_KEYS) >= _V6_KEYS_MAX:
            _V6_KEYS.clear()
        _V6_KEYS[address] = key
    return key


class AuthThrottle:
    __slots__ = ("_clients", "_max_failures", "_window_s", "_block_s", "_max_clients", "_clock")

    def __init__(self, *, max_failures: int = 20, window_s: float = 10.0, block_s: float = 30.0,
                 max_clients: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self._clients: OrderedDict[str, list[float]] = OrderedDict()  # ip -> [window start, count, blocked until]
        self._max_failures, self._window_s, self._block_s = max_failures, window_s, block_s
        self._max_clients = max_clients
        self._clock = clock

    def check(self, client: str | None) -> None:
        if not self._clients:
            return  # nobody failed lately: the usual case, decided without a look at the address
        entry = self._clients.get(client_key(client))
        if entry is not None and entry[2] > self._clock():
            raise AuthThrottled("too many failed authentication attempts from this client",
                                headers={"Retry-After": str(max(1, int(entry[2] - self._clock() + 0.999)))})

    def failed(self, client: str | None) -> None:
        key, now = client_key(client), self._clock()
        entry = self._clients.get(key)
        if entry is None or now - entry[0] > self._window_s:
            entry = [now, 0, 0.0]
            self._clients[key] = entry
            if len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
        entry[1] += 1
        self._clients.move_to_end(key)
        if entry[1] >= self._max_failures:
            entry[2] = now + self._block_s

    def tracked(self) -> int:
        return len(self._clients)
