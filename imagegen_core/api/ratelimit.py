"""Per-client token buckets for ``POST /images/generate``.

Hand-written on purpose, and small: the installed ``limits`` package offers fixed, moving and
sliding-window counters but no token bucket, and the issue asks for one — a steady refill
(``requestsPerMinute``) with a burst allowance (``burst``), which no window strategy reproduces (a window
of ``burst`` calls per ``burst / rate`` refuses a steady caller that a bucket would admit). State is
per process, like the Worker's per-isolate state: several API processes each apply the limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """Token buckets keyed by client. Used from the event loop only, so no lock.

    Buckets idle the longest are dropped past ``max_keys`` (a dropped bucket comes back full, which is what
    an idle client's bucket would be anyway after ``burst / rate`` seconds).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._params: tuple[float, int] | None = None

    def acquire(self, key: str, *, rate_per_s: float, burst: int) -> float:
        """Take one token from ``key``'s bucket. Returns 0.0 when the call may proceed, else the seconds
        until a token will be available (the call is refused and takes nothing)."""
        if self._params != (rate_per_s, burst):  # hot config changed the limit: start everyone afresh
            self._buckets.clear()
            self._params = (rate_per_s, burst)
        now = self._clock()
        bucket = self._buckets.pop(key, None) or _Bucket(tokens=float(burst), updated=now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate_per_s)
        bucket.updated = now
        self._buckets[key] = bucket  # re-inserted last: the dict stays ordered by last use
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate_per_s
