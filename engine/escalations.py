"""Escalation take-over: the escalated runs of a tenant, who took each one, and how it ended.

A run that escalates ends (``escalate_to_human``) with its reason codes in the audit trail
and its status in the run index (:class:`keel.threads.ThreadIndex`). Those two answer
"which runs escalated and why"; what they cannot hold is the human side: who took the
ticket over (so the team does not work it twice), what they did and when it was closed.
That lives here, in ``escalations``, one row per escalated thread, created on take-over.

Every step is audited (kind ``escalation``: ``taken``, ``resolved``) on the tenant's
hash-chained log, and a resolution is also kept as a labelled example for evaluation
(:mod:`engine.feedback`). Another tenant's thread looks exactly like a missing one.

Used by the JSON API (``api/routes/escalations.py``) and the review console (``console/``):

* :meth:`EscalationStore.list` — the queue (open, taken, resolved, or all active ones);
* :meth:`EscalationStore.get` — one escalation with its evidence (``state_of`` given);
* :meth:`EscalationStore.take` — assign it to the caller (visible to the team);
* :meth:`EscalationStore.resolve` — record what was done, by whom, and close it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, UTC
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from guards.dlp import redact
from keel.audit import AuditLog
from keel.db import Database
from keel.errors import KeelError

__all__ = [
    "Escalation",
    "EscalationError",
    "EscalationState",
    "EscalationStore",
    "Outcome",
    "Resolution",
    "StateReader",
]

EscalationState = Literal["open", "taken", "resolved"]
"""``open``: nobody has it. ``taken``: a person owns it (``assignee``). ``resolved``: closed
with a resolution."""

Outcome = Literal["resolved", "refunded", "replaced", "declined", "no_action", "other"]
"""What the person did, as a label (the free-text ``resolution`` says the rest)."""

StateReader = Callable[[str, str], "dict[str, Any] | None"]
"""``state_of(graph_id, thread_id)``: the thread's final state values (or None). The engine
passes the checkpointed graph's ``get_state``; kept as a callable so this module needs no graph."""

_DDL = """
CREATE TABLE IF NOT EXISTS escalations (
  thread_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  state TEXT NOT NULL,
  assignee TEXT,
  taken_at TEXT,
  outcome TEXT,
  resolution TEXT,
  resolved_by TEXT,
  resolved_at TEXT,
  updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS escalations_tenant ON escalations (tenant, state, updated_at)
"""


class EscalationError(KeelError):
    """A take-over or resolution refused; the escalation is unchanged."""

    def __init__(self, code: str, http_status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        """Machine-readable reason (``not_found``, ``already_taken``, ``not_assignee``, ``resolved``)."""
        self.http_status = http_status
        """Status an HTTP endpoint answers with."""
        self.message = message
        """Short, safe explanation."""


class Resolution(BaseModel):
    """What a person records when closing an escalation (the API's request body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: Outcome
    """What was done, as a label."""
    resolution: str = Field(min_length=1, max_length=4_000)
    """What was done, in words (stored DLP-redacted in the feedback set)."""


class Escalation(BaseModel):
    """One escalated run as the queue shows it."""

    model_config = ConfigDict(frozen=True)

    thread_id: str
    tenant: str
    ticket_id: str | None
    """The ticket the run handled."""
    requester: str | None
    """Who started the run."""
    route: str | None
    """The router's route."""
    reason_codes: list[str]
    """Why it escalated (from the run's final audit row)."""
    escalated_at: str
    """When the run escalated (ISO-8601 UTC)."""
    state: EscalationState
    assignee: str | None = None
    """Who took it over (None while open)."""
    taken_at: str | None = None
    outcome: str | None = None
    resolution: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None
    evidence: list[dict[str, Any]] | None = None
    """Retrieved evidence with citations (only from :meth:`EscalationStore.get` with a state reader)."""
    ticket: dict[str, Any] | None = None
    """The ticket (DLP-redacted; only from :meth:`EscalationStore.get` with a state reader)."""
    actions: list[dict[str, Any]] | None = None
    """The run's planned actions with their decisions (only from :meth:`EscalationStore.get`)."""


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class EscalationStore:
    """The escalated runs of each tenant and their take-over, in keel's database.

    ``on_resolved(escalation, actor)`` is called after a resolution is stored (the engine
    records it as a feedback example); a failure there is the caller's to log, the
    resolution stands.
    """

    def __init__(self, db: Database, audit: AuditLog, *,
                 on_resolved: Callable[[Escalation, str], None] | None = None) -> None:
        self.db = db
        self.audit = audit
        self.on_resolved = on_resolved

    def setup(self) -> EscalationStore:
        """Create the table (idempotent; once per database on Postgres)."""
        self.db.executescript(_DDL)
        return self

    # -- reads ---------------------------------------------------------------------------
    def list(self, tenant: str, *, state: EscalationState | Literal["active", "all"] = "active",
             limit: int = 50, offset: int = 0) -> list[Escalation]:
        """Escalated runs of ``tenant``, oldest first; ``active`` = open and taken."""
        sql = ("SELECT r.thread_id, r.tenant, r.ticket_id, r.requester, r.route, r.updated_at AS escalated_at,"
               " e.state, e.assignee, e.taken_at, e.outcome, e.resolution, e.resolved_by, e.resolved_at"
               " FROM run_index r LEFT JOIN escalations e ON e.thread_id = r.thread_id AND e.tenant = r.tenant"
               " WHERE r.tenant = ? AND r.status = 'escalated'")
        where, params = _state_filter(tenant, state)
        sql += where + " ORDER BY r.updated_at, r.thread_id LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, params)
            codes = self._reason_codes(tx, tenant, [r["thread_id"] for r in rows])
        return [self._out(r, codes.get(r["thread_id"], [])) for r in rows]

    def count(self, tenant: str, *, state: EscalationState | Literal["active", "all"] = "active") -> int:
        """How many :meth:`list` would return without paging."""
        sql = ("SELECT COUNT(*) AS n FROM run_index r LEFT JOIN escalations e"
               " ON e.thread_id = r.thread_id AND e.tenant = r.tenant WHERE r.tenant = ? AND r.status = 'escalated'")
        where, params = _state_filter(tenant, state)
        row = self.db.fetchone(sql + where, params)
        return int(row["n"]) if row else 0

    def get(self, tenant: str, thread_id: str, *, state_of: StateReader | None = None,
            graph_id: str = "support") -> Escalation:
        """One escalation of ``tenant`` (with ticket, evidence and actions when ``state_of``
        is given); :class:`EscalationError` 404 when the thread is not an escalated run of it."""
        with self.db.transaction() as tx:
            row = self._row(tx, tenant, thread_id)
            codes = self._reason_codes(tx, tenant, [thread_id])
        esc = self._out(row, codes.get(thread_id, []))
        if state_of is None:
            return esc
        values = state_of(graph_id, thread_id) or {}
        return esc.model_copy(update={
            "ticket": redact(values.get("ticket")) if values.get("ticket") else None,
            "evidence": list(values.get("evidence") or []),
            "actions": list(values.get("actions") or []),
            "reason_codes": list(values.get("reason_codes") or esc.reason_codes),
        })

    # -- writes --------------------------------------------------------------------------
    def take(self, tenant: str, thread_id: str, *, actor: str, correlation_id: str | None = None) -> Escalation:
        """Assign the escalation to ``actor``; idempotent for the same person.

        409 ``already_taken`` when someone else has it, 409 ``resolved`` when it is closed;
        the first of two concurrent take-overs wins (a conditional insert)."""
        now = _now()
        with self.db.transaction() as tx:
            self._row(tx, tenant, thread_id)  # 404 for another tenant's or a missing thread
            inserted = tx.execute(
                "INSERT INTO escalations (thread_id, tenant, state, assignee, taken_at, updated_at)"
                " VALUES (?, ?, 'taken', ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING",
                (thread_id, tenant, actor, now, now))
            if not inserted:
                cur = tx.fetchone("SELECT state, assignee FROM escalations WHERE thread_id = ?", (thread_id,))
                if cur is None or cur["state"] == "resolved":
                    raise EscalationError("resolved", 409, "this escalation is already resolved")
                if cur["assignee"] != actor:
                    raise EscalationError("already_taken", 409, f"this escalation is already taken by {cur['assignee']}")
        if not inserted:  # the same person again: nothing changes, nothing to audit
            return self.get(tenant, thread_id)
        self.audit.append(tenant, "escalation", actor=actor, thread_id=thread_id, correlation_id=correlation_id,
                          data={"event": "taken", "assignee": actor})
        return self.get(tenant, thread_id)

    def resolve(self, tenant: str, thread_id: str, body: Resolution, *, actor: str, is_admin: bool = False,
                correlation_id: str | None = None) -> Escalation:
        """Record ``body`` as the resolution by ``actor`` and close the escalation.

        Only its assignee may resolve it (an admin may resolve any, which also takes it);
        an escalation nobody took is taken by ``actor`` first. 409 ``resolved`` when closed
        already, 409 ``not_assignee`` when someone else owns it."""
        now = _now()
        with self.db.transaction() as tx:
            self._row(tx, tenant, thread_id)
            tx.execute(
                "INSERT INTO escalations (thread_id, tenant, state, assignee, taken_at, updated_at)"
                " VALUES (?, ?, 'taken', ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING",
                (thread_id, tenant, actor, now, now))
            cur = tx.fetchone(f"SELECT state, assignee FROM escalations WHERE thread_id = ?{self._lock}",
                              (thread_id,))
            assert cur is not None
            if cur["state"] == "resolved":
                raise EscalationError("resolved", 409, "this escalation is already resolved")
            if cur["assignee"] != actor and not is_admin:
                raise EscalationError("not_assignee", 409,
                                      f"this escalation is taken by {cur['assignee']}; only they (or an admin) may resolve it")
            done = tx.execute(
                "UPDATE escalations SET state = 'resolved', assignee = COALESCE(assignee, ?), outcome = ?,"
                " resolution = ?, resolved_by = ?, resolved_at = ?, updated_at = ? WHERE thread_id = ? AND state = 'taken'",
                (actor, body.outcome, body.resolution, actor, now, now, thread_id))
            if not done:
                raise EscalationError("resolved", 409, "this escalation is already resolved")
        self.audit.append(tenant, "escalation", actor=actor, thread_id=thread_id, correlation_id=correlation_id,
                          data={"event": "resolved", "outcome": body.outcome, "resolution": body.resolution,
                                "assignee": cur["assignee"]})
        esc = self.get(tenant, thread_id)
        if self.on_resolved is not None:
            self.on_resolved(esc, actor)
        return esc

    # -- helpers -------------------------------------------------------------------------
    @property
    def _lock(self) -> str:
        return " FOR UPDATE" if self.db.is_postgres else ""

    @staticmethod
    def _row(tx: Any, tenant: str, thread_id: str) -> dict[str, Any]:
        row = tx.fetchone(
            "SELECT r.thread_id, r.tenant, r.ticket_id, r.requester, r.route, r.updated_at AS escalated_at,"
            " e.state, e.assignee, e.taken_at, e.outcome, e.resolution, e.resolved_by, e.resolved_at"
            " FROM run_index r LEFT JOIN escalations e ON e.thread_id = r.thread_id AND e.tenant = r.tenant"
            " WHERE r.tenant = ? AND r.thread_id = ? AND r.status = 'escalated'", (tenant, thread_id))
        if row is None:  # another tenant's thread looks exactly like a missing one
            raise EscalationError("not_found", 404, "no escalated run with this thread id")
        return row

    @staticmethod
    def _reason_codes(tx: Any, tenant: str, thread_ids: list[str]) -> dict[str, list[str]]:
        """Reason codes of each thread's last ``run_finished`` audit row that escalated."""
        if not thread_ids:
            return {}
        marks = ",".join("?" for _ in thread_ids)
        rows = tx.fetchall(
            f"SELECT thread_id, data FROM audit_log WHERE tenant = ? AND kind = 'run_finished'"
            f" AND thread_id IN ({marks}) ORDER BY seq", [tenant, *thread_ids])
        out: dict[str, list[str]] = {}
        for r in rows:
            try:
                data = json.loads(r["data"])
            except ValueError:
                continue
            if data.get("status") == "escalated":
                out[r["thread_id"]] = [str(c) for c in data.get("reason_codes") or []]
        return out

    @staticmethod
    def _out(row: dict[str, Any], codes: list[str]) -> Escalation:
        return Escalation(
            thread_id=row["thread_id"], tenant=row["tenant"], ticket_id=row["ticket_id"], requester=row["requester"],
            route=row["route"], reason_codes=codes or ["escalated"], escalated_at=row["escalated_at"],
            state=row["state"] or "open", assignee=row["assignee"], taken_at=row["taken_at"], outcome=row["outcome"],
            resolution=row["resolution"], resolved_by=row["resolved_by"], resolved_at=row["resolved_at"])


def _state_filter(tenant: str, state: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` tail and parameters selecting escalations in ``state`` (the tenant's first)."""
    params: list[Any] = [tenant]
    if state == "open":
        return " AND e.state IS NULL", params
    if state in ("taken", "resolved"):
        return " AND e.state = ?", [*params, state]
    if state == "active":
        return " AND (e.state IS NULL OR e.state = 'taken')", params
    return "", params
