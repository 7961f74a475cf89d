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
small deployments (and the test suite) never see the gate. Above it, the runs a process may
hold follow an adaptive limit, as TCP's congestion window does (additive increase,
multiplicative decrease): every second the limit grows by a quarter of the floor while the
lag is low and the process uses what it has, and shrinks by a quarter while the lag is high.
A bare lag threshold is not enough: a burst of queued runs is claimed in a second or two,
before their steps have raised the lag, and then every one of them competes for the CPU
(and the connection pool) at once. The second signal is the one that matters to the runs:
how long the process's recent runs took from claim to end (smoothed), against
``target_run_s`` (a share of the pack's wall-clock cap): when they take longer, the limit
shrinks however low the lag looks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from keel import metrics

__all__ = ["ClaimGate", "GateState"]


@dataclass(frozen=True)
class GateState:
    """What the gate saw when asked."""

    lag_ms: float
    """Smoothed scheduling lag of this process (ms)."""
    held: int
    """Runs the process held when asked."""
    limit: int
    """Runs the process may hold now (the adaptive limit)."""
    open: bool
    """Whether a new claim is admitted."""


class ClaimGate:
    """Admits a claim while the process holds fewer than ``floor`` runs, or fewer than its
    adaptive limit with its scheduling lag at most ``max_lag_ms`` (see the module docstring)."""

    def __init__(
        self,
        *,
        max_lag_ms: float,
        floor: int,
        tick_s: float = 0.02,
        smoothing: float = 0.2,
        adjust_s: float = 1.0,
        target_run_s: float | None = None,
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
        self.adjust_s = adjust_s
        self.limit = self.floor
        """Runs the process may hold (adapted every ``adjust_s``, never below ``floor``)."""
        self._step = max(1, self.floor // 4)
        self._last_held = 0
        self.target_run_s = target_run_s
        """Claim-to-end time of a run above which the limit shrinks (None: lag only)."""
        self._run_s: float | None = None
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

    def run_ended(self, seconds: float) -> None:
        """A run this process held ended ``seconds`` after its claim (the worker calls it)."""
        self._run_s = seconds if self._run_s is None else self._run_s + 0.1 * (seconds - self._run_s)

    @property
    def run_s(self) -> float | None:
        """Smoothed claim-to-end time of this process's recent runs (None before the first)."""
        return self._run_s

    def adjust(self) -> int:
        """One step of the limit (the sampler calls it every ``adjust_s``; tests too): shrink
        by a quarter while the lag is high or recent runs took longer than ``target_run_s``,
        grow by a quarter of the floor otherwise while the process holds about as many runs
        as it may."""
        slow = self.target_run_s is not None and self._run_s is not None and self._run_s > self.target_run_s
        if self._lag_ms > self.max_lag_ms or slow:
            self.limit = max(self.floor, int(self.limit * 0.75))
        elif self._last_held >= self.limit - self._step:
            self.limit += self._step
        return self.limit

    def _sample(self, stop: threading.Event | None) -> None:
        next_adjust = self._clock() + self.adjust_s
        while stop is None or not stop.is_set():
            due = self._clock() + self.tick_s
            self._sleep(self.tick_s)
            now = self._clock()
            self.observe(now - due)
            if now >= next_adjust:
                next_adjust = now + self.adjust_s
                self.adjust()
                metrics.claim_gate(self._lag_ms, self.limit)

    def start(self, stop: threading.Event | None = None) -> ClaimGate:
        """Start the sampler thread (once per gate), until ``stop`` is set (the workers' stop
        event: an app started and stopped many times, as in tests, leaves no sampler behind)."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._sample, args=(stop,), name="keel-claim-gate", daemon=True).start()
        return self

    # -- the question ---------------------------------------------------------------------
    @property
    def lag_ms(self) -> float:
        return self._lag_ms

    def state(self, held: int) -> GateState:
        """Whether a thread may claim now, with ``held`` runs held by this process."""
        self._last_held = held
        is_open = held < self.floor or (held < self.limit and self._lag_ms <= self.max_lag_ms)
        if not is_open:
            self.closed_total += 1
        return GateState(lag_ms=self._lag_ms, held=held, limit=self.limit, open=is_open)
