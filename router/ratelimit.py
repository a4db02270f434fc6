"""Optional per-endpoint rate limit: a token bucket, refused with 429 `RateLimited`.

Checked in router.pipeline right after authentication, so unauthenticated floods do
not use up a legitimate caller's budget. Configured by the endpoint's
`rate_limit: {requests_per_second, burst}` (a scoregate extension of the YAML).
"""

from __future__ import annotations

import time
from typing import Callable

from .errors import TooManyRequests


class RateLimited(TooManyRequests):
    code = "RateLimited"


class _Bucket:
    __slots__ = ("tokens", "updated", "rate", "burst")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.updated = now


class RateLimiter:
    __slots__ = ("_buckets", "_clock")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._clock = clock

    def check(self, endpoint: str, limit: tuple[float, int] | None) -> None:
        if limit is None:
            return
        rate, burst = limit
        now = self._clock()
        bucket = self._buckets.get(endpoint)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[endpoint] = _Bucket(rate, burst, now)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens < 1:
            wait_s = max(1, int((1 - bucket.tokens) / rate + 0.999))
            raise RateLimited(f"endpoint '{endpoint}' allows {rate:g} requests/s (burst {burst})",
                              headers={"Retry-After": str(wait_s)})
        bucket.tokens -= 1
