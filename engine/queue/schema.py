"""The run queue's tables, created once per database (idempotent; concurrent first starts
serialize on an advisory lock), and the columns added to them since."""

from __future__ import annotations

from engine.queue.base import QueueBase
from keel.db import IntegrityError
from keel.telemetry import SpanStore
from keel.retry import Backoff, RetryPolicy

__all__ = ["SCHEMA_LOCK", "QueueSchema"]

SCHEMA_LOCK = 72616521
"""Advisory lock that concurrent first starts of the API's schema set-up serialize on."""

_DDL = """
CREATE TABLE IF NOT EXISTS api_threads (
  thread_id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  graph_id TEXT,
  requester TEXT,
  created_by TEXT NOT NULL,
  status TEXT NOT NULL,
  metadata TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  interrupts TEXT
);
CREATE INDEX IF NOT EXISTS api_threads_page ON api_threads (tenant, status, updated_at, thread_id);
CREATE TABLE IF NOT EXISTS api_runs (
  run_id TEXT PRIMARY KEY,
  thread_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  assistant_id TEXT NOT NULL,
  graph_id TEXT NOT NULL,
  status TEXT NOT NULL,
  kind TEXT NOT NULL,
  payload TEXT NOT NULL,
  stream_mode TEXT NOT NULL,
  metadata TEXT NOT NULL,
  multitask_strategy TEXT NOT NULL,
  correlation_id TEXT NOT NULL,
  created_by TEXT NOT NULL,
  requester TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  retries INTEGER NOT NULL DEFAULT 0,
  max_retries INTEGER NOT NULL DEFAULT 2,
  available_at DOUBLE PRECISION NOT NULL,
  lease_owner TEXT,
  lease_expires_at DOUBLE PRECISION,
  last_worker TEXT,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  finished_at TEXT
);
CREATE INDEX IF NOT EXISTS api_runs_claim ON api_runs (status, available_at);
CREATE INDEX IF NOT EXISTS api_runs_thread ON api_runs (thread_id, created_at);
CREATE INDEX IF NOT EXISTS api_runs_tenant ON api_runs (tenant, status);
CREATE TABLE IF NOT EXISTS api_run_events (
  run_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  event TEXT NOT NULL,
  data TEXT NOT NULL,
  PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS api_decisions (
  thread_id TEXT NOT NULL,
  plan_hash TEXT NOT NULL,
  tenant TEXT NOT NULL,
  decision TEXT NOT NULL,
  reviewer TEXT NOT NULL,
  fingerprint TEXT NOT NULL,
  run_id TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (thread_id, plan_hash)
)
"""

_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("api_runs", "lease_expiries", "INTEGER NOT NULL DEFAULT 0"),
    ("api_runs", "dead_reason", "TEXT"),
    ("api_runs", "traceparent", "TEXT"),  # W3C trace context of the request that queued it (engine.tracing)
    ("api_runs", "versions", "TEXT"),  # what the latest attempt ran with (engine.versions)
)
"""Columns added after ``_DDL`` was first applied (databases created before have the tables
without them). ``_DDL`` itself stays as applied: on Postgres a changed script would run
again, but its ``CREATE TABLE IF NOT EXISTS`` would not add a column to an existing table.
Postgres applies these as one more script, once per database (``keel_schema``); SQLite
checks for each column at start-up."""


class QueueSchema(QueueBase):
    """Creates the queue's tables."""

    def setup(self) -> QueueSchema:
        """Create the tables (idempotent; concurrent first starts serialize on an advisory lock)."""
        ddl = (f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK});" + _DDL) if self.db.is_postgres else _DDL
        # a racing CREATE … IF NOT EXISTS from a process without the lock: tried again (keel.retry)
        RetryPolicy(Backoff(0.2, 0.4), max_attempts=3, retry_on=lambda e: isinstance(e, IntegrityError)).retrying()(
            self.db.executescript, ddl)
        self._add_column("api_threads", "interrupts", "TEXT")
        if self.db.is_postgres:
            self.db.executescript(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK});" + ";".join(
                f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {d}" for t, c, d in _ADDED_COLUMNS))
        else:
            for t, c, d in _ADDED_COLUMNS:
                self._add_column(t, c, d)
        SpanStore(self.db).setup()  # runs' traces (keel.telemetry): deleted with their thread
        return self

    def _add_column(self, table: str, column: str, decl: str) -> None:
        """Add a column that an older schema lacks (checked first: no table lock when present)."""
        with self.db.transaction() as tx:
            if self.db.is_postgres:
                tx.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                present = tx.fetchone(
                    "SELECT 1 AS x FROM information_schema.columns WHERE table_schema = current_schema()"
                    " AND table_name = ? AND column_name = ?", (table, column)) is not None
            else:
                present = any(r["name"] == column for r in tx.fetchall(f"PRAGMA table_info({table})"))
            if not present:
                tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
