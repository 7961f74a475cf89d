"""Tamper-evident audit log: every route decision, policy decision, approval and tool call.

Rows are hash-chained per tenant: each row stores ``prev_hash`` and
``row_hash = sha256(prev_hash || canonical(row))``. Changing or deleting a row in the
database breaks the chain at that row, which :meth:`AuditLog.verify` reports. Appends
to one tenant's chain are serialized by locking the tenant's chain-head row, so two
workers writing at once still produce one linear chain.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, UTC
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from keel.db import Database, IntegrityError

__all__ = ["AuditLog", "AuditKind", "AuditRow", "ChainReport", "Redactor", "canonical_json"]

AuditKind = Literal[
    "run_started",
    "route_decision",
    "injection_screen",
    "plan_proposed",
    "policy_decision",
    "approval_requested",
    "approval",
    "tool_call",
    "verification",
    "run_finished",
    "model_call",
    "admin",
    "budget_alert",
    "escalation",
    "webhook",
    "state_update",
]
"""What an audit row records (``escalation``: a take-over or resolution; ``webhook``: a
subscription added or removed; ``state_update``: a thread's state written from outside a run)."""

Redactor = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes an event's data and returns it with personal data and secrets removed
(``guards.dlp.redact`` in keel's wiring)."""

GENESIS = "0" * 64
"""``prev_hash`` of a tenant's first row."""


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept. Used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class AuditRow(BaseModel):
    """One audit entry as stored."""

    seq: int
    """Position in the tenant's chain (1-based)."""
    tenant: str
    """Tenant whose chain holds the row."""
    thread_id: str | None
    """Run thread, if the event belongs to one."""
    kind: str
    """An :data:`AuditKind`."""
    actor: str
    """Who acted: a user id, ``system`` or ``model:<provider>``."""
    at: str
    """ISO-8601 UTC time."""
    correlation_id: str | None
    """Request/run correlation id."""
    data: dict[str, Any]
    """Event details, DLP-redacted before they are stored."""
    prev_hash: str
    """Hash of the previous row of the chain."""
    row_hash: str
    """Hash over ``prev_hash`` and this row's content."""


class ChainReport(BaseModel):
    """Result of verifying one tenant's chain."""

    tenant: str
    """Tenant checked."""
    ok: bool
    """True when every row hashes correctly and the sequence has no gap."""
    rows: int
    """Rows checked."""
    first_bad_seq: int | None = None
    """First row where the chain breaks."""
    problem: str | None = None
    """What is wrong there."""


def _row_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


_DDL = """
CREATE TABLE IF NOT EXISTS audit_head (
  tenant TEXT PRIMARY KEY,
  seq BIGINT NOT NULL,
  row_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
  tenant TEXT NOT NULL,
  seq BIGINT NOT NULL,
  thread_id TEXT,
  kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  at TEXT NOT NULL,
  correlation_id TEXT,
  data TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  row_hash TEXT NOT NULL,
  PRIMARY KEY (tenant, seq)
);
CREATE INDEX IF NOT EXISTS audit_log_thread ON audit_log (tenant, thread_id)
"""


class AuditLog:
    """Append-only, hash-chained audit rows in the keel database.

    ``redact`` is required, with no default: what counts as personal data is the DLP
    guard's decision (``guards.dlp``, a layer above this one), and an audit log built
    without it must not silently store customers' data unredacted.
    """

    def __init__(self, db: Database, *, redact: Redactor) -> None:
        self.db = db
        self.redact = redact

    def setup(self) -> None:
        """Create the tables (idempotent)."""
        self.db.executescript(_DDL)

    def append(
        self,
        tenant: str,
        kind: AuditKind,
        *,
        actor: str,
        data: dict[str, Any] | None = None,
        thread_id: str | None = None,
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> AuditRow:
        """Append one row to the tenant's chain (redacted, hashed, serialized per tenant)."""
        at_s = (at or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
        payload = self.redact(data or {})
        for _ in range(5):
            try:
                return self._append(tenant, kind, actor, payload, thread_id, correlation_id, at_s)
            except IntegrityError:
                continue  # a concurrent first append created the head row; retry under its lock
        raise RuntimeError("audit chain contention")

    def _append(self, tenant, kind, actor, payload, thread_id, correlation_id, at_s) -> AuditRow:
        lock = " FOR UPDATE" if self.db.is_postgres else ""
        with self.db.transaction() as tx:
            head = tx.fetchone(f"SELECT seq, row_hash FROM audit_head WHERE tenant = ?{lock}", (tenant,))
            seq, prev = (head["seq"], head["row_hash"]) if head else (0, GENESIS)
            seq += 1
            body = {
                "seq": seq,
                "tenant": tenant,
                "thread_id": thread_id,
                "kind": kind,
                "actor": actor,
                "at": at_s,
                "correlation_id": correlation_id,
                "data": payload,
            }
            row_hash = _row_hash(prev, body)
            if head:
                tx.execute("UPDATE audit_head SET seq = ?, row_hash = ? WHERE tenant = ?", (seq, row_hash, tenant))
            else:
                tx.execute("INSERT INTO audit_head (tenant, seq, row_hash) VALUES (?, ?, ?)", (tenant, seq, row_hash))
            tx.execute(
                "INSERT INTO audit_log (tenant, seq, thread_id, kind, actor, at, correlation_id, data, prev_hash, row_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, seq, thread_id, kind, actor, at_s, correlation_id, canonical_json(payload), prev, row_hash),
            )
        return AuditRow(**body, prev_hash=prev, row_hash=row_hash)

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[AuditRow]:
        """Rows of a tenant (optionally one thread), oldest first."""
        sql = "SELECT * FROM audit_log WHERE tenant = ?"
        params: list[Any] = [tenant]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        sql += " ORDER BY seq LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, params)
        return [AuditRow(**{**r, "data": json.loads(r["data"])}) for r in rows]

    def verify(self, tenant: str) -> ChainReport:
        """Recompute the tenant's chain; report the first row that does not match."""
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT * FROM audit_log WHERE tenant = ? ORDER BY seq", (tenant,))
            head = tx.fetchone("SELECT seq, row_hash FROM audit_head WHERE tenant = ?", (tenant,))
        prev = GENESIS
        for i, r in enumerate(rows, start=1):
            if r["seq"] != i:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="row missing")
            try:
                data = json.loads(r["data"])
            except ValueError:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="data unreadable")
            body = {k: r[k] for k in ("seq", "tenant", "thread_id", "kind", "actor", "at", "correlation_id")}
            body["data"] = data
            if r["prev_hash"] != prev or _row_hash(prev, body) != r["row_hash"]:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="hash mismatch")
            prev = r["row_hash"]
        if head is not None and (head["seq"] != len(rows) or head["row_hash"] != prev):
            return ChainReport(
                tenant=tenant, ok=False, rows=len(rows), first_bad_seq=len(rows) + 1, problem="rows missing at the end"
            )
        return ChainReport(tenant=tenant, ok=True, rows=len(rows))
