"""Claim gate: a worker process stops taking new runs while its CPU cannot serve the ones it holds.

Why: a run's wall-clock cap (the pack's ``budgets.wall_clock_s``) counts from the moment a
worker claims it, not from when it was queued. A worker that claims every queued run on a
machine whose CPU is already saturated spreads the same CPU over more runs: each one's
steps wait longer for the GIL, every run gets slower, and past the cap they all escalate
``budget_exceeded`` instead of completing (``bench/model_latency.py``, 500 clients: no run
completed). Left in the queue, a run loses nothing: its cap has not started, and any worker
with spare CPU may take it. So under overload the worker keeps throughput at what its CPU
gives and lets the queue absorb the rest.

The signal is *scheduling lag*, measured by one sampler thread per process: it sleeps a
fixed tick and records how late it wakes up (smoothed). A thread that wants the GIL waits
for every runnable thread ahead of it, so the lag rises with exactly what delays the held
runs' steps: GIL contention inside the process and CPU starvation of the whole machine
(Postgres, other processes). Process CPU time would miss the second and cannot tell a
process that is busy from one that is behind.

Below ``floor`` runs held, claims are always admitted: a worker always makes progress, and
small deployments (and the test suite) never see the gate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClaimGate", "GateState"]


@dataclass(frozen=True)
class GateState:
    """What the gate saw when asked."""

    lag_ms: float
    """Smoothed scheduling lag of this process (ms)."""
    held: int
    """Runs the process held when asked."""
    open: bool
    """Whether a new claim is admitted."""


class ClaimGate:
    """Admits a claim unless the process holds ``floor`` runs or more and its scheduling lag
    is above ``max_lag_ms`` (see the module docstring)."""

    def __init__(
        self,
        *,
        max_lag_ms: float,
        floor: int,
        tick_s: float = 0.02,
        smoothing: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_lag_ms <= 0:
            raise ValueError("max_lag_ms must be > 0 (disable the gate instead)")
        self.max_lag_ms = max_lag_ms
        """Lag above which a claim waits (ms)."""
        self.floor = max(1, floor)
        """Runs held below which a claim is always admitted."""
        self.tick_s = tick_s
        self._smoothing = smoothing
        self._clock = clock
        self._sleep = sleep
        self._lag_ms = 0.0
        self._started = False
        self._lock = threading.Lock()
        self.closed_total = 0
        """Claims the gate held back so far (each a wait of the asking thread)."""

    # -- the sampler --------------------------------------------------------------------
    def observe(self, late_s: float) -> None:
        """Record one wake-up ``late_s`` seconds after it was due (the sampler calls it; tests too)."""
        late_ms = max(0.0, late_s * 1000.0)
        self._lag_ms += self._smoothing * (late_ms - self._lag_ms)

    def _sample_forever(self) -> None:
        while True:
            due = self._clock() + self.tick_s
            self._sleep(self.tick_s)
            self.observe(self._clock() - due)

    def start(self) -> ClaimGate:
        """Start the sampler thread (once per gate; a daemon: it dies with the process)."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._sample_forever, name="keel-claim-gate", daemon=True).start()
        return self

    # -- the question ---------------------------------------------------------------------
    @property
    def lag_ms(self) -> float:
        return self._lag_ms

    def state(self, held: int) -> GateState:
        """Whether a thread may claim now, with ``held`` runs held by this process."""
        is_open = held < self.floor or self._lag_ms <= self.max_lag_ms
        if not is_open:
            self.closed_total += 1
        return GateState(lag_ms=self._lag_ms, held=held, open=is_open)
