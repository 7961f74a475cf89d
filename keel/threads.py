"""An index of support runs by tenant and status.

Checkpoints answer "what is the state of thread T"; operators also ask "which runs of
tenant X wait for approval", which a checkpoint store cannot answer without scanning
every thread. Nodes record each run's status here as it changes, so pending approvals
are one indexed query however many threads are parked.
"""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from keel.db import Database

__all__ = ["ThreadIndex"]

_DDL = """
CREATE TABLE IF NOT EXISTS run_index (
  thread_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  ticket_id TEXT,
  requester TEXT,
  route TEXT,
  status TEXT NOT NULL,
  plan_hash TEXT,
  updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_index_status ON run_index (tenant, status, updated_at)
"""


class ThreadIndex:
    """Status of every run, by tenant."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> None:
        """Create the table (idempotent)."""
        self.db.executescript(_DDL)

    def record(
        self,
        thread_id: str,
        *,
        tenant: str,
        status: str,
        ticket_id: str | None = None,
        requester: str | None = None,
        route: str | None = None,
        plan_hash: str | None = None,
    ) -> None:
        """Insert or update a run's row."""
        now = datetime.now(UTC).isoformat()
        self.db.execute(
            "INSERT INTO run_index (thread_id, tenant, ticket_id, requester, route, status, plan_hash, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET"
            " status = excluded.status, route = COALESCE(excluded.route, run_index.route),"
            " plan_hash = excluded.plan_hash, updated_at = excluded.updated_at",
            (thread_id, tenant, ticket_id, requester, route, status, plan_hash, now),
        )

    def get(self, thread_id: str) -> dict[str, Any] | None:
        """One run's row."""
        with self.db.transaction() as tx:
            return tx.fetchone("SELECT * FROM run_index WHERE thread_id = ?", (thread_id,))

    def list(self, *, tenant: str | None = None, status: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Runs filtered by tenant and status, newest first."""
        sql, params = "SELECT * FROM run_index WHERE 1 = 1", []
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY updated_at DESC, thread_id LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            return tx.fetchall(sql, params)
