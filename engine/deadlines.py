"""Approval deadlines: when a pending plan is due, who should look at it, and what happens if nobody does.

Each plan a run parks on gets one row here (keyed by thread and plan hash, so a refused
resume that asks again keeps the original deadline), written by the worker right after
the run paused: ``deadline = paused_at + [approvals] deadline_minutes`` with the pack's
``assignee_group`` and ``on_deadline``. The worker's sweep (:func:`engine.review.sweep`)
claims expired rows with a conditional ``UPDATE`` (``pending`` → ``applying``: exactly one
worker gets each, however many sweep) and applies the pack's default through the same
engine path as a reviewer's decision (a queued resume run recorded in ``api_decisions``,
so a reviewer deciding at the same moment and the system cannot both win).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, UTC
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from guards.pack import ApprovalPolicy
from keel.db import Database

__all__ = ["Deadline", "DeadlineState", "DeadlineStore"]

DeadlineState = Literal["pending", "applying", "applied", "superseded"]
"""``pending``: waiting. ``applying``: a worker claimed it. ``applied``: the default was
queued (``run_id``). ``superseded``: a reviewer decided first, or the plan changed."""

_DDL = """
CREATE TABLE IF NOT EXISTS approval_deadlines (
  thread_id TEXT NOT NULL,
  plan_hash TEXT NOT NULL,
  tenant TEXT NOT NULL,
  graph_id TEXT NOT NULL,
  requested_at TEXT NOT NULL,
  deadline TEXT NOT NULL,
  deadline_ts DOUBLE PRECISION NOT NULL,
  assignee_group TEXT NOT NULL,
  on_deadline TEXT NOT NULL,
  state TEXT NOT NULL,
  claimed_by TEXT,
  claimed_ts DOUBLE PRECISION,
  applied_at TEXT,
  run_id TEXT,
  PRIMARY KEY (thread_id, plan_hash)
);
CREATE INDEX IF NOT EXISTS approval_deadlines_due ON approval_deadlines (state, deadline_ts)
"""


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Deadline(BaseModel):
    """One pending plan's deadline (what ``GET /approvals`` items show)."""

    model_config = ConfigDict(frozen=True)

    thread_id: str
    plan_hash: str
    tenant: str
    graph_id: str
    requested_at: str
    deadline: str
    """ISO-8601 UTC."""
    assignee_group: str
    """Who should decide (the pack's ``[approvals] assignee_group``)."""
    on_deadline: Literal["escalate", "reject"]
    state: DeadlineState
    run_id: str | None = None


class DeadlineStore:
    """Deadlines of pending approvals, in keel's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> DeadlineStore:
        """Create the table (idempotent; once per database on Postgres)."""
        self.db.executescript(_DDL)
        return self

    def register(self, tenant: str, thread_id: str, graph_id: str, plan_hash: str, rules: ApprovalPolicy,
                 *, now: datetime | None = None) -> Deadline:
        """The deadline of the plan ``plan_hash`` on ``thread_id``, created on first sight
        from ``rules`` (later calls for the same plan keep the first deadline)."""
        at = now or datetime.now(UTC)
        due = at + timedelta(minutes=rules.deadline_minutes)
        self.db.execute(
            "INSERT INTO approval_deadlines (thread_id, plan_hash, tenant, graph_id, requested_at, deadline, deadline_ts,"
            " assignee_group, on_deadline, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')"
            " ON CONFLICT (thread_id, plan_hash) DO NOTHING",
            (thread_id, plan_hash, tenant, graph_id, _iso(at), _iso(due), due.timestamp(), rules.assignee_group,
             rules.on_deadline))
        got = self.get(tenant, thread_id, plan_hash)
        assert got is not None
        return got

    def get(self, tenant: str, thread_id: str, plan_hash: str) -> Deadline | None:
        """One plan's deadline (None for another tenant's or an unknown plan)."""
        row = self.db.fetchone("SELECT * FROM approval_deadlines WHERE thread_id = ? AND plan_hash = ? AND tenant = ?",
                               (thread_id, plan_hash, tenant))
        return _out(row) if row else None

    def for_threads(self, tenant: str, thread_ids: list[str]) -> dict[str, Deadline]:
        """The pending deadline of each listed thread of ``tenant`` that has one."""
        if not thread_ids:
            return {}
        marks = ",".join("?" for _ in thread_ids)
        with self.db.transaction() as tx:
            rows = tx.fetchall(f"SELECT * FROM approval_deadlines WHERE tenant = ? AND state = 'pending'"
                               f" AND thread_id IN ({marks}) ORDER BY requested_at", [tenant, *thread_ids])
        return {r["thread_id"]: _out(r) for r in rows}

    def claim_expired(self, worker_id: str, *, now: float | None = None, limit: int = 20) -> list[Deadline]:
        """Claim up to ``limit`` expired pending deadlines for ``worker_id``; each row is
        claimed by exactly one caller (``UPDATE … WHERE state = 'pending'``)."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            cands = tx.fetchall("SELECT thread_id, plan_hash FROM approval_deadlines WHERE state = 'pending'"
                                " AND deadline_ts <= ? ORDER BY deadline_ts LIMIT ?", (now, limit))
        out = []
        for c in cands:
            if self.db.execute("UPDATE approval_deadlines SET state = 'applying', claimed_by = ?, claimed_ts = ?"
                               " WHERE thread_id = ? AND plan_hash = ? AND state = 'pending'",
                               (worker_id, time.time(), c["thread_id"], c["plan_hash"])):
                row = self.db.fetchone("SELECT * FROM approval_deadlines WHERE thread_id = ? AND plan_hash = ?",
                                       (c["thread_id"], c["plan_hash"]))
                if row is not None:
                    out.append(_out(row))
        return out

    def settle(self, d: Deadline, state: Literal["applied", "superseded"], run_id: str | None = None) -> None:
        """Record what became of a claimed deadline."""
        self.db.execute("UPDATE approval_deadlines SET state = ?, run_id = ?, applied_at = ? WHERE thread_id = ?"
                        " AND plan_hash = ?", (state, run_id, _iso(datetime.now(UTC)), d.thread_id, d.plan_hash))

    def release_stale(self, *, older_than_s: float = 300.0) -> int:
        """Put back ``applying`` rows whose worker died before settling them (a crash between
        claim and queueing); the decision's unique key keeps a second application out."""
        return self.db.execute("UPDATE approval_deadlines SET state = 'pending', claimed_by = NULL, claimed_ts = NULL"
                               " WHERE state = 'applying' AND claimed_ts <= ?", (time.time() - older_than_s,))


def _out(row: dict[str, Any]) -> Deadline:
    return Deadline(**{k: row[k] for k in ("thread_id", "plan_hash", "tenant", "graph_id", "requested_at", "deadline",
                                           "assignee_group", "on_deadline", "state", "run_id")})
