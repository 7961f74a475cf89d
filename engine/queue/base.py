"""What every part of the run queue shares: statuses, errors, ids, row decoding, and the
base class whose transactions the other parts (:mod:`engine.queue.threads`, ``runs``,
``leases``, ``events``, ``wakeups``) run in."""

from __future__ import annotations

import json
from datetime import datetime, UTC
from typing import Any

from langgraph.checkpoint.base.id import uuid6

from keel.db import Database
from keel.errors import StoreError

__all__ = [
    "TERMINAL",
    "ACTIVE",
    "LEASE_EXPIRED_REPEATEDLY",
    "RETRIES_EXHAUSTED",
    "CHANNEL",
    "ThreadBusy",
    "NotFound",
    "NotCancellable",
    "new_id",
    "iso_now",
    "QueueBase",
]

TERMINAL = ("success", "error", "interrupted", "timeout", "dead")
"""Run statuses after which a run never executes again (``dead`` runs can be retried by an admin)."""
ACTIVE = ("pending", "running")
"""Run statuses that make a thread busy."""

LEASE_EXPIRED_REPEATEDLY = "lease_expired_repeatedly"
"""Dead-letter reason: the run's lease expired ``KEEL_WORKER_MAX_LEASE_EXPIRIES`` times (every
worker that took it died, crashed or hung on it)."""
RETRIES_EXHAUSTED = "retries_exhausted"
"""Dead-letter reason: the run failed transiently more than its ``max_retries`` times."""

CHANNEL = "keel_queue"
"""Postgres NOTIFY channel: payload ``""`` when a run became claimable, the run id when it ended."""


class ThreadBusy(StoreError):
    """A run was refused because the thread already has one in flight (multitask ``reject``)."""

    code = "thread_busy"


class NotFound(StoreError):
    """No such row for this tenant."""

    code = "not_found"


class NotCancellable(StoreError):
    """The run applies an approval decision and a worker has already started on it.

    An approved plan runs to its end: stopping it between its steps would leave it half
    done (approved but not executed, or executed under a cancelled run)."""

    code = "approval_executing"


def new_id() -> str:
    """A time-ordered UUID (v6, as LangGraph's checkpoint ids)."""
    return str(uuid6())


def iso_now() -> str:
    """UTC timestamp in the LangGraph API's format."""
    return datetime.now(UTC).isoformat()


_JSON_COLS_THREAD = ("metadata",)
_JSON_COLS_RUN = ("payload", "stream_mode", "metadata")


def dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), default=str)


def thread_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for c in _JSON_COLS_THREAD:
        out[c] = json.loads(out[c])
    return out


def run_row(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for c in _JSON_COLS_RUN:
        out[c] = json.loads(out[c])
    if out.get("versions"):  # engine.versions: what the latest attempt ran with
        out["versions"] = json.loads(out["versions"])
    return out


class QueueBase:
    """keel's database and the statements every part of the queue needs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._for_update = " FOR UPDATE" if db.is_postgres else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if db.is_postgres else ""

    def notify(self, run_id: str | None = None) -> None:
        """Wake this process's waiters (implemented by :class:`engine.queue.wakeups.Wakeups`)."""
        raise NotImplementedError

    def _signal(self, tx: Any, run_id: str = "") -> None:
        """NOTIFY other processes at commit: a run is claimable (``""``) or ``run_id`` ended."""
        if self.db.is_postgres:
            tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, run_id))

    def _settle_thread(self, tx: Any, thread_id: str, thread_status: str | None) -> str:
        """Set the thread's status after a run ended: busy while others wait, else ``thread_status``;
        returns the status set."""
        more = tx.fetchone(
            "SELECT run_id FROM api_runs WHERE thread_id = ? AND status IN ('pending', 'running') LIMIT 1", (thread_id,)
        )
        if more:
            status = "busy"
        elif thread_status is not None:
            status = thread_status
        else:
            last = tx.fetchone(
                "SELECT status FROM api_runs WHERE thread_id = ? AND status NOT IN ('pending', 'running', 'interrupted')"
                " ORDER BY created_at DESC LIMIT 1",
                (thread_id,),
            )
            prev = tx.fetchone("SELECT status FROM api_threads WHERE thread_id = ?", (thread_id,))
            status = "error" if last and last["status"] in ("error", "dead") else (
                prev["status"] if prev and prev["status"] not in ("busy",) else "idle"
            )
        tx.execute("UPDATE api_threads SET status = ?, updated_at = ? WHERE thread_id = ?", (status, iso_now(), thread_id))
        return status

    @staticmethod
    def _applies_decision(tx: Any, thread_id: str, run_ids: list[str]) -> dict[str, Any] | None:
        """The approval decision one of the thread's runs resumes it with, if any."""
        for r in run_ids:
            row = tx.fetchone("SELECT * FROM api_decisions WHERE thread_id = ? AND run_id = ?", (thread_id, r))
            if row is not None:
                return row
        return None
