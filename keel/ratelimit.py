"""keel's one in-process rate limiter: GCRA per key, for one process's callers.

GCRA (the generic cell rate algorithm) is a token bucket kept as one number per key, the
"theoretical arrival time": ``per_minute`` requests a minute sustained, up to ``burst`` at
once (default: a minute's worth, as a bucket that holds ``per_minute`` tokens).
:meth:`LocalRateLimiter.take` spends one request and returns 0.0, or the seconds until the
next one would be allowed (a 429's ``Retry-After``).

Used by the API of the embedded server (one process by construction; per API key) and by
the tool runner (per tenant). Servers that share Postgres use
:class:`api.ratelimit.SharedRateLimiter`, the same algorithm in one row per key, so that N
servers enforce one limit, not N.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["LocalRateLimiter"]

_MAX_KEYS = 100_000
"""Keys kept before the idle ones are dropped (callers are authenticated first; bound memory anyway)."""


class LocalRateLimiter:
    """GCRA per key in this process's memory (state per key: one float); thread-safe."""

    def __init__(
        self, per_minute: float, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        """Requests per second sustained; 0 or less turns limiting off."""
        self.burst = burst if burst is not None else max(1, int(per_minute))
        """Requests allowed at once."""
        self._clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of ``key``; 0.0 if allowed, else seconds until one is."""
        if self.rate <= 0:
            return 0.0
        step = 1.0 / self.rate
        tolerance = (self.burst - 1) * step
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key, now), now)
            if tat - now > tolerance:
                return tat - now - tolerance
            if len(self._tat) > _MAX_KEYS:
                self._tat = {k: v for k, v in self._tat.items() if v > now}
            self._tat[key] = tat + step
            return 0.0

    def allow(self, key: str) -> bool:
        """Spend one request of ``key`` if one is available now."""
        return self.take(key) == 0.0
