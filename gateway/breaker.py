"""A circuit breaker per model, per process: stop calling a model that keeps failing.

Without it a dead model server is called (and waited for) on every task of every run,
and each run spends its wall-clock budget on timeouts before the fallback answers. After
``failures`` consecutive transport failures (timeouts, connection errors, 5xx) the breaker
opens: the model is skipped (the call is recorded with cause ``circuit_open``) until
``cooldown_s`` passed; then one caller probes it (half-open). A probe that succeeds
closes the breaker, one that fails opens it for another cooldown. Invalid output does not
count: the server is alive, the next model of the chain handles the answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CircuitBreaker", "BreakerBoard", "BREAKERS", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class CircuitBreaker:
    """One model's breaker. Thread-safe; the clock is injectable for tests."""

    failures: int = 3
    cooldown_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _streak: int = 0
    _opened_at: float | None = None
    _probing: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        """Closed (calls go through), open (skipped), or half-open (one probe may go)."""
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a call go to the model now? In half-open only the first caller probes."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half_open" and not self._probing:
                self._probing = True
                return True
            return False

    def success(self) -> None:
        """The model answered (valid or not): close the breaker."""
        with self._lock:
            self._streak, self._opened_at, self._probing = 0, None, False

    def failure(self) -> None:
        """The model did not answer: count it; open at the threshold or when a probe failed."""
        with self._lock:
            self._streak += 1
            if self._probing or self._streak >= self.failures:
                self._opened_at = self.clock()
            self._probing = False


class BreakerBoard:
    """The process's breakers, one per model identity (endpoint and model name)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self.clock = clock

    def get(self, key: str, *, failures: int = 3, cooldown_s: float = 30.0) -> CircuitBreaker:
        """The breaker of ``key``, created on first use with these thresholds."""
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                breaker = self._breakers[key] = CircuitBreaker(failures=failures, cooldown_s=cooldown_s,
                                                                     clock=self.clock)
            return breaker

    def reset(self) -> None:
        """Forget every breaker (tests; an operator's restart does the same)."""
        with self._lock:
            self._breakers.clear()


BREAKERS = BreakerBoard()
"""Per process: every gateway of the process shares what it learnt about a model."""
