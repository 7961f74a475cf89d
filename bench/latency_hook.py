"""A model latency injected into every model call, the same way in every system measured
by :mod:`bench.model_latency`.

Importing this module (``keel worker --import bench.latency_hook``, the bare graph in the
benchmark's own process, or ``langgraph dev`` serving :mod:`bench.latency_studio`) wraps
:meth:`gateway.local.LocalProvider.complete` so each call sleeps ``BENCH_MODEL_LATENCY_S``
seconds before answering, as a remote model would keep the run waiting. The local
provider answers every gateway task of the support graph, so the same calls sleep in all
three systems. A benchmark setting, not a keel one: hence ``BENCH_*``, not ``KEEL_*``.

While ``BENCH_MODEL_STATS_DIR`` is set, a daemon thread writes this process's counters
to ``<dir>/<pid>.json`` four times a second: calls started and finished, calls in flight
now, and the integral of calls in flight over time (the benchmark divides its change by a
cell's duration: the mean number of runs waiting inside a model call).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.snapshots import start_writer

__all__ = ["Stats", "STATS", "install", "keel_install", "latency_s"]


def latency_s() -> float:
    """The injected latency per model call (``BENCH_MODEL_LATENCY_S``, default 0)."""
    return float(os.environ.get("BENCH_MODEL_LATENCY_S", "0") or 0)


class Stats:
    """Calls into the model of this process, and their time-integral of in-flight calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = self.finished = self.in_flight = self.peak = 0
        self._area = 0.0
        self._t = time.monotonic()

    def _advance(self) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._t)
        self._t = now

    def enter(self) -> None:
        with self._lock:
            self._advance()
            self.started += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self._advance()
            self.finished += 1
            self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        """Counters now; ``area`` is in call-seconds, ``t`` is ``time.time()``."""
        with self._lock:
            self._advance()
            return {"pid": os.getpid(), "t": time.time(), "started": self.started, "finished": self.finished,
                    "in_flight": self.in_flight, "peak": self.peak, "area": self._area}


STATS = Stats()
_INSTALLED: list[bool] = []


def install() -> None:
    """Wrap the local provider once per process (idempotent); start the stats writer."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    from gateway.local import LocalProvider

    real = LocalProvider.complete
    delay = latency_s()

    def complete(self: Any, task: str, schema: Any, system: str, payload: dict[str, Any]) -> Any:
        STATS.enter()
        try:
            if delay > 0:
                time.sleep(delay)
            return real(self, task, schema, system, payload)
        finally:
            STATS.leave()

    async def acomplete(self: Any, task: str, schema: Any, system: str, payload: dict[str, Any]) -> Any:
        """The same latency on an event loop (an async gateway path awaits this)."""
        STATS.enter()
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            return real(self, task, schema, system, payload)
        finally:
            STATS.leave()

    LocalProvider.complete = complete  # type: ignore[method-assign]
    LocalProvider.acomplete = acomplete  # type: ignore[attr-defined]
    out = os.environ.get("BENCH_MODEL_STATS_DIR")
    if out:
        start_writer(Path(out), STATS.snapshot, every_s=0.25, name="bench-latency-stats")


def keel_install(runtime: Any) -> None:  # noqa: ARG001 - keel's --import hook signature
    """``keel worker --import bench.latency_hook``: the wrapper is installed on import."""
    install()


install()

