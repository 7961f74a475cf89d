"""Wake-ups: in-process, and across processes by LISTEN/NOTIFY (Postgres).

Workers and ``runs.wait`` poll as a fallback; a notification cuts the wait short, so a
queued run starts, and a finished run is answered, without a polling delay.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator

import psycopg

from engine.queue.base import CHANNEL, QueueBase
from keel.db import Database

__all__ = ["Wakeups"]

log = logging.getLogger("keel.queue")


class Wakeups(QueueBase):
    """This process's waiters (idle workers, ``runs.wait`` requests) and the listener thread."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._cond = threading.Condition()
        self._version = 0
        self._waiters: dict[str, set[tuple[Any, asyncio.Event]]] = {}
        self._waiters_lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listen_stop = threading.Event()
        self.listening = False
        """True while this process receives other processes' NOTIFYs (Postgres)."""

    def notify(self, run_id: str | None = None, *, claimable: bool = True) -> None:
        """Wake waiters in this process: ``claimable`` (a run may be claimable now) wakes one
        idle worker thread, one per call, so a queued run wakes one waiter and not every
        thread of the process; ``run_id``: also the :meth:`done_event` waiters of that run."""
        if claimable:
            self._wake_worker()
        if run_id is not None:
            self._wake(run_id)

    def wake_all(self) -> None:
        """Wake every idle worker thread of this process (to stop, or after a gap in which
        notifications may have been missed)."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def _wake_worker(self) -> None:
        """Wake one idle worker thread of this process (it claims; the others sleep on)."""
        with self._cond:
            self._version += 1
            self._cond.notify(1)

    def _wake(self, run_id: str) -> None:
        with self._waiters_lock:
            entries = list(self._waiters.get(run_id, ()))
        for loop, ev in entries:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # that event loop is closed
                pass

    @contextmanager
    def done_event(self, run_id: str) -> Iterator[asyncio.Event]:
        """An asyncio event set when ``run_id`` may have ended (check its status after)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._waiters_lock:
            self._waiters.setdefault(run_id, set()).add(entry)
        try:
            yield entry[1]
        finally:
            with self._waiters_lock:
                waiting = self._waiters.get(run_id)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[run_id]

    def poll_cap(self, poll_s: float) -> float:
        """Longest fallback poll interval: long while notifications arrive, else ``poll_s``."""
        return max(poll_s, 1.0) if self.listening else poll_s

    def start_listener(self) -> bool:
        """Postgres: LISTEN on a dedicated connection (``KEEL_DATABASE_DIRECT_URL``'s, not a
        pooler's) in a daemon thread, waking this process's workers and waiters on every
        NOTIFY of the queue. No-op on SQLite or if running."""
        if not self.db.is_postgres or self._listener is not None:
            return False
        self._listen_stop.clear()
        self._listener = threading.Thread(target=self._listen, name="keel-queue-listener", daemon=True)
        self._listener.start()
        return True

    def stop_listener(self) -> None:
        """Stop the listener thread and close its connection."""
        self._listen_stop.set()
        t, self._listener = self._listener, None
        if t is not None:
            t.join(timeout=5)

    def _listen(self) -> None:
        while not self._listen_stop.is_set():
            try:
                # the direct URL: through a transaction pooler a LISTEN would stay on a server
                # connection lent to other clients, and this session would hear nothing
                with self.db.connect_direct() as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self.wake_all()  # anything may have changed while not listening
                    with self._waiters_lock:
                        pending = list(self._waiters)
                    for rid in pending:
                        self._wake(rid)
                    while not self._listen_stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            if n.payload:  # a run ended: whoever waits on it
                                self._wake(n.payload)
                            else:  # a run is claimable: one idle worker thread per process tries
                                self._wake_worker()
            except psycopg.OperationalError as e:  # a restart or an outage: polling covers the gap
                log.warning("queue listener lost its connection; polling until it reconnects: %s",
                            " ".join(str(e).split())[:300])
            except Exception:  # noqa: BLE001 - polling covers the gap; reconnect
                log.warning("queue listener lost its connection; polling until it reconnects", exc_info=True)
            finally:
                self.listening = False
            self._listen_stop.wait(1.0)

    def version(self) -> int:
        """Change counter of this process (see :meth:`wait_change`)."""
        return self._version

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until :meth:`notify` moved past ``seen`` or ``timeout`` passed."""
        with self._cond:
            if self._version == seen:
                self._cond.wait(timeout)
            return self._version
