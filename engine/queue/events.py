"""A run's stream events (``values``, ``updates``, ``error``), stored as the worker produces
them so ``runs.stream``/``join`` read them from any server, in order, exactly once."""

from __future__ import annotations

import json
from typing import Any
from collections.abc import Iterable

from engine.queue.base import QueueBase, dumps

__all__ = ["StreamEvents"]


class StreamEvents(QueueBase):
    """Append and read a run's events."""

    def append_events(self, run_id: str, start_seq: int, events: Iterable[tuple[str, Any]]) -> int:
        """Store stream events of a run from ``start_seq`` on; returns the next seq.

        Conflicting seqs (a resumed run re-emitting) are ignored so a reader never sees
        an event twice.
        """
        sql = "INSERT INTO api_run_events (run_id, seq, event, data) VALUES (?, ?, ?, ?) ON CONFLICT (run_id, seq) DO NOTHING"
        rows = [(run_id, start_seq + i, event, dumps(data)) for i, (event, data) in enumerate(events)]
        if len(rows) == 1:  # the worker's case, once per step: one statement, one round trip
            self.db.execute(sql, rows[0])
        else:
            with self.db.transaction() as tx:
                for row in rows:
                    tx.execute(sql, row)
        seq = start_seq + len(rows)
        # no wake-up: nothing waits on stored events in-process (readers poll), and an idle
        # worker woken per stored event would only query the queue for nothing
        return seq

    def next_event_seq(self, run_id: str) -> int:
        """Seq the next stored event of the run gets."""
        row = self.db.fetchone("SELECT MAX(seq) AS m FROM api_run_events WHERE run_id = ?", (run_id,))
        return (row["m"] + 1) if row and row["m"] is not None else 0

    def events_after(self, run_id: str, seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Stored events with ``seq > seq``, in order."""
        with self.db.transaction() as tx:
            rows = tx.fetchall(
                "SELECT seq, event, data FROM api_run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, seq, limit),
            )
        return [{"seq": r["seq"], "event": r["event"], "data": json.loads(r["data"])} for r in rows]
