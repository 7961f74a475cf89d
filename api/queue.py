"""Durable run queue: threads, runs, their stream events, and approval decisions.

Every run the API accepts is a row of ``api_runs`` in keel's own database; ``keel
worker`` processes (any number, any host) and the embedded worker thread of ``keel
serve`` claim rows, execute them against the checkpointed graph and write the outcome
back. The API process never runs a graph itself, so a request handler that dies loses
nothing and a worker that dies loses only its lease.

Why ``SELECT … FOR UPDATE SKIP LOCKED`` leases rather than a queue library
(procrastinate, pgqueuer, Celery, …):

* The queue must share a transaction with keel's own rows. Creating a run checks and
  marks its thread busy (multitask strategy ``reject``/``enqueue``) under the thread's
  row lock; claiming a run re-checks that no other run of the thread is live. A
  library with its own tables and connection would make those two writes
  non-atomic, and LangGraph's ``RunCreate`` fields (stream modes, command, checkpoint)
  would live in opaque job payloads we could not query (run list, dead letters).
* It must also run on SQLite for the embedded default; every Postgres queue library is
  Postgres-only, so we would keep a second implementation anyway.
* The pattern is small (claim, heartbeat, finish, retry: a few statements here), is
  the one those libraries use internally, and has no broker to operate.

Lease protocol: a claim sets ``lease_owner`` and ``lease_expires_at``; the worker
heartbeats every ``lease/3`` seconds. A run whose lease expired (the worker died or
hung) is claimable again and the new worker resumes it from the graph's last
checkpoint, up to ``KEEL_WORKER_MAX_LEASE_EXPIRIES`` times: a run whose lease keeps
expiring (it crashes every worker it lands on) is dead-lettered instead. Finishing,
retrying and heartbeating are conditioned on still owning the
lease, so a worker that lost its lease cannot overwrite the new owner's outcome. Times
are epoch seconds from the workers' clocks (keep hosts NTP-synced; the lease, 30 s by
default, dwarfs ordinary skew).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from keel.db import Database, IntegrityError

__all__ = [
    "RunQueue",
    "Claim",
    "LEASE_EXPIRED_REPEATEDLY",
    "RETRIES_EXHAUSTED",
    "ThreadBusy",
    "NotFound",
    "NotCancellable",
    "TERMINAL",
    "ACTIVE",
    "new_id",
    "iso_now",
    "backoff_delay",
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

log = logging.getLogger("keel.queue")


class ThreadBusy(Exception):
    """A run was refused because the thread already has one in flight (multitask ``reject``)."""


class NotFound(Exception):
    """No such row for this tenant."""


class NotCancellable(Exception):
    """The run applies an approval decision and a worker has already started on it.

    An approved plan runs to its end: stopping it between its steps would leave it half
    done (approved but not executed, or executed under a cancelled run)."""


def new_id() -> str:
    """A time-ordered UUID (v6, as LangGraph's checkpoint ids)."""
    from langgraph.checkpoint.base.id import uuid6

    return str(uuid6())


def iso_now() -> str:
    """UTC timestamp in the LangGraph API's format."""
    return datetime.now(timezone.utc).isoformat()


def backoff_delay(retry: int, base: float, cap: float, rnd: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped.

    ``retry`` counts from 1. The fixed half guarantees spacing, the random half spreads
    workers that failed together against one flaky dependency.
    """
    exp = min(cap, base * (2 ** max(0, retry - 1)))
    r = (rnd or random).random()
    return exp / 2 + r * exp / 2


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
)
"""Columns added after ``_DDL`` was first applied (databases created before have the tables
without them). ``_DDL`` itself stays as applied: on Postgres a changed script would run
again, but its ``CREATE TABLE IF NOT EXISTS`` would not add a column to an existing table.
Postgres applies these as one more script, once per database (``keel_schema``); SQLite
checks for each column at start-up."""

_JSON_COLS_THREAD = ("metadata",)
_JSON_COLS_RUN = ("payload", "stream_mode", "metadata")


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), default=str)


def _thread(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for c in _JSON_COLS_THREAD:
        out[c] = json.loads(out[c])
    return out


def _run(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    out = dict(row)
    for c in _JSON_COLS_RUN:
        out[c] = json.loads(out[c])
    return out


@dataclass(frozen=True)
class Claim:
    """What one claim did: the run leased (or None), and the runs it dead-lettered instead of
    leasing because their lease had expired too often (for the caller to audit)."""

    run: dict[str, Any] | None
    dead_lettered: tuple[dict[str, Any], ...] = ()


class RunQueue:
    """Threads and runs of the API, and the lease protocol of the workers."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._for_update = " FOR UPDATE" if db.is_postgres else ""
        self._skip_locked = " FOR UPDATE SKIP LOCKED" if db.is_postgres else ""
        self._cond = threading.Condition()
        self._version = 0
        self._waiters: dict[str, set[tuple[Any, asyncio.Event]]] = {}
        self._waiters_lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listen_stop = threading.Event()
        self.listening = False
        """True while this process receives other processes' NOTIFYs (Postgres)."""

    def setup(self) -> "RunQueue":
        """Create the tables (idempotent; concurrent first starts serialize on an advisory lock)."""
        ddl = (f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK});" + _DDL) if self.db.is_postgres else _DDL
        for attempt in range(3):
            try:
                self.db.executescript(ddl)
                break
            except IntegrityError:  # a racing CREATE … IF NOT EXISTS from a process without the lock
                if attempt == 2:
                    raise
                time.sleep(0.2)
        self._add_column("api_threads", "interrupts", "TEXT")
        if self.db.is_postgres:
            self.db.executescript(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK});" + ";".join(
                f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {d}" for t, c, d in _ADDED_COLUMNS))
        else:
            for t, c, d in _ADDED_COLUMNS:
                self._add_column(t, c, d)
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

    # -- wake-ups: in-process, and across processes by LISTEN/NOTIFY (Postgres) ---------
    # Workers and ``runs.wait`` poll as a fallback; a notification cuts the wait short, so
    # a queued run starts, and a finished run is answered, without a polling delay.
    def notify(self, run_id: str | None = None) -> None:
        """Wake waiters in this process (a run changed state or got an event); ``run_id``:
        also the :meth:`done_event` waiters of that run."""
        with self._cond:
            self._version += 1
            self._cond.notify_all()
        if run_id is not None:
            self._wake(run_id)

    def _wake_worker(self) -> None:
        """Wake one idle worker thread of this process (it claims; the others sleep on)."""
        with self._cond:
            self._version += 1
            self._cond.notify(1)

    def _signal(self, tx: Any, run_id: str = "") -> None:
        """NOTIFY other processes at commit: a run is claimable (``""``) or ``run_id`` ended."""
        if self.db.is_postgres:
            tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, run_id))

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
        """Postgres: LISTEN on a dedicated connection in a daemon thread, waking this process's
        workers and waiters on every NOTIFY of the queue. No-op on SQLite or if running."""
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
        import psycopg

        while not self._listen_stop.is_set():
            try:
                with psycopg.connect(self.db.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self.notify()  # anything may have changed while not listening
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

    # -- threads --------------------------------------------------------------------
    def create_thread(
        self,
        tenant: str,
        created_by: str,
        *,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        if_exists: str = "raise",
        graph_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a thread; returns ``(thread, created)``.

        An id taken by another tenant is reported exactly like one taken in the caller's
        tenant with ``if_exists=raise`` (``IntegrityError``), so ids leak nothing.
        """
        tid = thread_id or str(uuid.uuid4())
        now = iso_now()
        meta = dict(metadata or {})
        if graph_id:
            meta.setdefault("graph_id", graph_id)
        try:
            with self.db.transaction() as tx:
                tx.execute(
                    "INSERT INTO api_threads (thread_id, tenant, graph_id, requester, created_by, status, metadata,"
                    " created_at, updated_at) VALUES (?, ?, ?, NULL, ?, 'idle', ?, ?, ?)",
                    (tid, tenant, graph_id, created_by, _dumps(meta), now, now),
                )
        except IntegrityError:
            existing = self.get_thread(tenant, tid)
            if existing is not None and if_exists == "do_nothing":
                return existing, False
            raise
        return self.get_thread(tenant, tid), True  # type: ignore[return-value]

    def get_thread(self, tenant: str, thread_id: str) -> dict[str, Any] | None:
        """The tenant's thread, or None (another tenant's thread is None too)."""
        return _thread(self.db.fetchone("SELECT * FROM api_threads WHERE thread_id = ? AND tenant = ?",
                                        (thread_id, tenant)))

    def search_threads(
        self,
        tenant: str,
        *,
        status: str | None = None,
        ids: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str = "created_at",
        sort_order: str = "desc",
    ) -> list[dict[str, Any]]:
        """The tenant's threads, filtered; metadata filters are exact key matches."""
        sql = "SELECT * FROM api_threads WHERE tenant = ?"
        params: list[Any] = [tenant]
        if status:
            sql += " AND status = ?"
            params.append(status)
        if ids:
            sql += " AND thread_id IN (" + ",".join("?" * len(ids)) + ")"
            params += ids
        col = sort_by if sort_by in ("created_at", "updated_at", "thread_id", "status") else "created_at"
        order = "ASC" if sort_order == "asc" else "DESC"
        by = f" ORDER BY {col} {order}, thread_id {order}"
        if not metadata:
            # page over ids first (an index-only scan of (tenant, status, updated_at, thread_id)
            # for the approvals list), then read just that page's rows
            ids_sql = sql.replace("SELECT *", "SELECT thread_id", 1) + by + " LIMIT ? OFFSET ?"
            sql = (f"SELECT t.* FROM api_threads t JOIN ({ids_sql}) page ON page.thread_id = t.thread_id"
                   f" ORDER BY t.{col} {order}, t.thread_id {order}")
            params += [limit, offset]
            with self.db.transaction() as tx:
                return [_thread(r) for r in tx.fetchall(sql, params)]  # type: ignore[misc]
        sql += by
        with self.db.transaction() as tx:
            rows = [_thread(r) for r in tx.fetchall(sql, params)]
        rows = [r for r in rows if all(r["metadata"].get(k) == v for k, v in metadata.items())]
        return rows[offset : offset + limit]  # type: ignore[return-value]

    def count_threads(self, tenant: str, status: str | None = None) -> int:
        """How many threads the tenant has (optionally in one status)."""
        sql, params = "SELECT COUNT(*) AS n FROM api_threads WHERE tenant = ?", [tenant]
        if status:
            sql += " AND status = ?"
            params.append(status)
        with self.db.transaction() as tx:
            return int(tx.fetchone(sql, params)["n"])  # type: ignore[index]

    def update_thread_metadata(self, tenant: str, thread_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Merge ``metadata`` into the thread's metadata."""
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT * FROM api_threads WHERE thread_id = ? AND tenant = ?{self._for_update}", (thread_id, tenant)
            )
            if row is None:
                raise NotFound(thread_id)
            meta = {**json.loads(row["metadata"]), **metadata}
            tx.execute(
                "UPDATE api_threads SET metadata = ?, updated_at = ? WHERE thread_id = ?",
                (_dumps(meta), iso_now(), thread_id),
            )
        return self.get_thread(tenant, thread_id)  # type: ignore[return-value]

    def delete_thread(self, tenant: str, thread_id: str) -> None:
        """Delete a thread and its runs; refused (ThreadBusy) while a run is in flight."""
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT thread_id FROM api_threads WHERE thread_id = ? AND tenant = ?{self._for_update}",
                (thread_id, tenant),
            )
            if row is None:
                raise NotFound(thread_id)
            busy = tx.fetchone(
                "SELECT run_id FROM api_runs WHERE thread_id = ? AND status IN ('pending', 'running') LIMIT 1",
                (thread_id,),
            )
            if busy:
                raise ThreadBusy(thread_id)
            tx.execute(
                "DELETE FROM api_run_events WHERE run_id IN (SELECT run_id FROM api_runs WHERE thread_id = ?)",
                (thread_id,),
            )
            tx.execute("DELETE FROM api_runs WHERE thread_id = ?", (thread_id,))
            tx.execute("DELETE FROM api_decisions WHERE thread_id = ?", (thread_id,))
            tx.execute("DELETE FROM api_threads WHERE thread_id = ?", (thread_id,))

    # -- runs -----------------------------------------------------------------------
    def create_run(
        self,
        tenant: str,
        thread_id: str,
        *,
        assistant_id: str,
        graph_id: str,
        kind: str,
        payload: dict[str, Any],
        created_by: str,
        correlation_id: str,
        stream_mode: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        multitask_strategy: str = "reject",
        max_retries: int = 2,
        after_seconds: float = 0.0,
        run_id: str | None = None,
        set_requester: bool = False,
        decision: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Queue a run on the tenant's thread, honouring the multitask strategy.

        ``reject``: ThreadBusy when a run is pending or running. ``enqueue``: runs after
        the thread's earlier runs. ``interrupt``/``rollback``: earlier in-flight runs are
        cancelled and this one starts once they have stopped. ``set_requester`` records
        ``created_by`` as the thread's requester if it has none yet. ``decision`` records
        an approval decision in the same transaction (idempotency of approvals).
        """
        rid = run_id or new_id()
        now = iso_now()
        with self.db.transaction() as tx:
            th = tx.fetchone(
                f"SELECT * FROM api_threads WHERE thread_id = ? AND tenant = ?{self._for_update}", (thread_id, tenant)
            )
            if th is None:
                raise NotFound(thread_id)
            inflight = tx.fetchall(
                "SELECT run_id, status FROM api_runs WHERE thread_id = ? AND status IN ('pending', 'running')",
                (thread_id,),
            )
            if inflight:
                if multitask_strategy == "reject":
                    raise ThreadBusy(thread_id)
                if multitask_strategy in ("interrupt", "rollback"):
                    if self._applies_decision(tx, thread_id, [r["run_id"] for r in inflight]):
                        raise ThreadBusy(thread_id)  # an approved plan is never interrupted
                    for r in inflight:
                        if r["status"] == "pending":
                            tx.execute(
                                "UPDATE api_runs SET status = 'interrupted', error = ?, updated_at = ?, finished_at = ?"
                                " WHERE run_id = ?",
                                (f"superseded by run {rid}", now, now, r["run_id"]),
                            )
                            self._signal(tx, r["run_id"])
                        else:
                            tx.execute("UPDATE api_runs SET cancel_requested = 1 WHERE run_id = ?", (r["run_id"],))
            if decision is not None:
                tx.execute(
                    "INSERT INTO api_decisions (thread_id, plan_hash, tenant, decision, reviewer, fingerprint, run_id,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (thread_id, decision["plan_hash"], tenant, decision["decision"], decision["reviewer"],
                     decision["fingerprint"], rid, now),
                )
            requester = th["requester"]
            if requester is None and set_requester:
                requester = created_by
            tx.execute(
                "INSERT INTO api_runs (run_id, thread_id, tenant, assistant_id, graph_id, status, kind, payload,"
                " stream_mode, metadata, multitask_strategy, correlation_id, created_by, requester, max_retries,"
                " available_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rid, thread_id, tenant, assistant_id, graph_id, kind, _dumps(payload), _dumps(stream_mode or []),
                 _dumps(metadata or {}), multitask_strategy, correlation_id, created_by, requester, max_retries,
                 time.time() + max(0.0, after_seconds), now, now),
            )
            tx.execute(
                "UPDATE api_threads SET status = 'busy', graph_id = COALESCE(graph_id, ?), requester = ?,"
                " updated_at = ? WHERE thread_id = ?",
                (graph_id, requester, now, thread_id),
            )
            self._signal(tx)
        self.notify()
        return self.get_run(tenant, thread_id, rid)  # type: ignore[return-value]

    def get_run(self, tenant: str, thread_id: str, run_id: str) -> dict[str, Any] | None:
        """The run, if it belongs to the tenant's thread."""
        return _run(self.db.fetchone("SELECT * FROM api_runs WHERE run_id = ? AND thread_id = ? AND tenant = ?",
                                     (run_id, thread_id, tenant)))

    def get_run_any(self, run_id: str) -> dict[str, Any] | None:
        """A run by id regardless of tenant (workers only)."""
        return _run(self.db.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (run_id,)))

    def run_status(self, run_id: str) -> str | None:
        """Just the status (cheap poll)."""
        row = self.db.fetchone("SELECT status FROM api_runs WHERE run_id = ?", (run_id,))
        return row["status"] if row else None

    def list_runs(
        self, tenant: str, thread_id: str, *, limit: int = 10, offset: int = 0, status: str | None = None
    ) -> list[dict[str, Any]]:
        """The thread's runs, newest first."""
        sql = "SELECT * FROM api_runs WHERE thread_id = ? AND tenant = ?"
        params: list[Any] = [thread_id, tenant]
        if status:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            return [_run(r) for r in tx.fetchall(sql, params)]  # type: ignore[misc]

    def list_dead(self, tenant: str, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The tenant's dead-lettered runs, newest first."""
        with self.db.transaction() as tx:
            rows = tx.fetchall(
                "SELECT * FROM api_runs WHERE tenant = ? AND status = 'dead' ORDER BY updated_at DESC, run_id"
                " LIMIT ? OFFSET ?",
                (tenant, limit, offset),
            )
        return [_run(r) for r in rows]  # type: ignore[misc]

    @staticmethod
    def _applies_decision(tx: Any, thread_id: str, run_ids: list[str]) -> dict[str, Any] | None:
        """The approval decision one of the thread's runs resumes it with, if any."""
        for r in run_ids:
            row = tx.fetchone("SELECT * FROM api_decisions WHERE thread_id = ? AND run_id = ?", (thread_id, r))
            if row is not None:
                return row
        return None

    def cancel_run(self, tenant: str, thread_id: str, run_id: str) -> dict[str, Any]:
        """Cancel: a pending run ends ``interrupted`` now, a running one at its next step.

        A run applying an approval decision is cancellable only while no worker has
        started it: its decision is then withdrawn and the plan waits for a decision
        again (the returned run has it under ``withdrawn_decision``). Once started,
        :class:`NotCancellable`."""
        now = iso_now()
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT status, attempts FROM api_runs WHERE run_id = ? AND thread_id = ? AND tenant = ?{self._for_update}",
                (run_id, thread_id, tenant),
            )
            if row is None:
                raise NotFound(run_id)
            decision = self._applies_decision(tx, thread_id, [run_id]) if row["status"] in ACTIVE else None
            if decision and (row["status"] == "running" or row["attempts"] > 0):
                raise NotCancellable(run_id)
            if row["status"] == "pending":
                tx.execute(
                    "UPDATE api_runs SET status = 'interrupted', error = 'cancelled', updated_at = ?, finished_at = ?"
                    " WHERE run_id = ?",
                    (now, now, run_id),
                )
                if decision:
                    # withdrawn before any worker touched it: the graph still waits at the
                    # approval, so the plan is pending again and may be decided anew
                    tx.execute("DELETE FROM api_decisions WHERE thread_id = ? AND run_id = ?", (thread_id, run_id))
                if self._settle_thread(tx, thread_id, "interrupted" if decision else None) == "busy":
                    self._signal(tx)  # a run queued behind it can go now
                self._signal(tx, run_id)
            elif row["status"] == "running":
                tx.execute("UPDATE api_runs SET cancel_requested = 1, updated_at = ? WHERE run_id = ?", (now, run_id))
        self.notify(run_id)
        run = self.get_run(tenant, thread_id, run_id)
        if run is not None and decision is not None and row["status"] == "pending":
            run["withdrawn_decision"] = {k: decision[k] for k in ("plan_hash", "decision", "reviewer")}
        return run  # type: ignore[return-value]

    def retry_dead(self, tenant: str, run_id: str) -> dict[str, Any]:
        """Requeue a dead-lettered run with a fresh budget of retries and lease expiries (admin)."""
        now = iso_now()
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT thread_id, status FROM api_runs WHERE run_id = ? AND tenant = ?{self._for_update}",
                (run_id, tenant),
            )
            if row is None:
                raise NotFound(run_id)
            if row["status"] != "dead":
                raise ThreadBusy(f"run {run_id} is {row['status']}, not dead")
            other = tx.fetchone(
                "SELECT run_id FROM api_runs WHERE thread_id = ? AND status IN ('pending', 'running') LIMIT 1",
                (row["thread_id"],),
            )
            if other:
                raise ThreadBusy(row["thread_id"])
            tx.execute(
                "UPDATE api_runs SET status = 'pending', retries = 0, lease_expiries = 0, dead_reason = NULL,"
                " available_at = ?, lease_owner = NULL, lease_expires_at = NULL, error = NULL, finished_at = NULL,"
                " updated_at = ? WHERE run_id = ?",
                (time.time(), now, run_id),
            )
            tx.execute("UPDATE api_threads SET status = 'busy', updated_at = ? WHERE thread_id = ?", (now, row["thread_id"]))
            thread_id = row["thread_id"]
            self._signal(tx)
        self.notify()
        return self.get_run(tenant, thread_id, run_id)  # type: ignore[return-value]

    # -- the lease protocol -------------------------------------------------------------
    def claim(self, worker_id: str, lease_s: float, *, max_lease_expiries: int | None = None) -> dict[str, Any] | None:
        """Lease the oldest runnable run, or None (see :meth:`claim_next`)."""
        return self.claim_next(worker_id, lease_s, max_lease_expiries=max_lease_expiries).run

    def claim_next(self, worker_id: str, lease_s: float, *, max_lease_expiries: int | None = None) -> Claim:
        """Lease the oldest runnable run; resumes (a reviewer's decision, someone waiting on
        it) go before new work.

        Runnable: pending and due, or running with an expired lease (its worker died).
        Per thread, runs execute one at a time in creation order: the candidate's thread
        row is locked (``SKIP LOCKED``: another worker is claiming on it) and, in a new
        statement that sees every committed claim, no other live or earlier run of the
        thread may exist.

        Taking over an expired lease counts on the run row (``lease_expiries``). A run
        whose lease has now expired ``max_lease_expiries`` times is dead-lettered
        (:data:`LEASE_EXPIRED_REPEATEDLY`) instead of leased: a run that kills or hangs
        every worker it lands on (a poison input, a node that exhausts memory) would
        otherwise be taken over forever, each time taking a worker down with it. Counted
        durably because the workers that could remember it are the ones that died.
        """
        now = time.time()
        dead: list[dict[str, Any]] = []
        claimed: dict[str, Any] | None = None
        with self.db.transaction() as tx:
            cands = tx.fetchall(
                "SELECT run_id, thread_id, created_at, status, lease_expiries FROM api_runs"
                " WHERE (status = 'pending' AND available_at <= ?) OR (status = 'running' AND lease_expires_at < ?)"
                " ORDER BY CASE WHEN kind = 'resume' THEN 0 ELSE 1 END, created_at, run_id LIMIT 16"
                + self._skip_locked,
                (now, now),
            )
            for c in cands:
                th = tx.fetchone(f"SELECT thread_id FROM api_threads WHERE thread_id = ?{self._skip_locked}", (c["thread_id"],))
                if th is None:
                    continue
                expiries = c["lease_expiries"] + (1 if c["status"] == "running" else 0)
                if c["status"] == "running" and max_lease_expiries is not None and expiries >= max_lease_expiries:
                    dead.append(self._dead_letter_expired(tx, c["run_id"], expiries, max_lease_expiries))
                    continue
                blocker = tx.fetchone(
                    "SELECT run_id FROM api_runs WHERE thread_id = ? AND run_id <> ? AND ("
                    "(status = 'running' AND lease_expires_at >= ?)"
                    " OR (status IN ('pending', 'running') AND (created_at < ? OR (created_at = ? AND run_id < ?))))"
                    " LIMIT 1",
                    (c["thread_id"], c["run_id"], now, c["created_at"], c["created_at"], c["run_id"]),
                )
                if blocker:
                    continue
                tx.execute(
                    "UPDATE api_runs SET status = 'running', lease_owner = ?, last_worker = ?, lease_expires_at = ?,"
                    " attempts = attempts + 1, lease_expiries = ?, updated_at = ? WHERE run_id = ?",
                    (worker_id, worker_id, now + lease_s, expiries, iso_now(), c["run_id"]),
                )
                tx.execute("UPDATE api_threads SET status = 'busy' WHERE thread_id = ?", (c["thread_id"],))
                claimed = _run(tx.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (c["run_id"],)))
                break
        for d in dead:
            self.notify(d["run_id"])
            log.warning("run %s dead-lettered: %s", d["run_id"], d["error"])
        return Claim(claimed, tuple(dead))

    def _dead_letter_expired(self, tx: Any, run_id: str, expiries: int, limit: int) -> dict[str, Any]:
        """Dead-letter a run whose lease expired once too often (in the claim's transaction)."""
        now = iso_now()
        row = tx.fetchone("SELECT last_worker FROM api_runs WHERE run_id = ?", (run_id,))
        error = (f"{LEASE_EXPIRED_REPEATEDLY}: the run's lease expired {expiries} times (limit {limit}): the worker"
                 f" running it died, crashed or hung on every attempt (last: {row['last_worker'] if row else '?'})")
        tx.execute(
            "UPDATE api_runs SET status = 'dead', dead_reason = ?, lease_expiries = ?, error = ?, lease_owner = NULL,"
            " lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE run_id = ?",
            (LEASE_EXPIRED_REPEATEDLY, expiries, error, now, now, run_id),
        )
        out = _run(tx.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (run_id,)))
        if self._settle_thread(tx, out["thread_id"], "error") == "busy":  # type: ignore[index]
            self._signal(tx)
        self._signal(tx, run_id)
        return out  # type: ignore[return-value]

    def heartbeat(self, run_id: str, worker_id: str, lease_s: float) -> tuple[bool, bool]:
        """Extend the lease; returns ``(still_owned, cancel_requested)``."""
        with self.db.transaction() as tx:
            n = tx.execute(
                "UPDATE api_runs SET lease_expires_at = ? WHERE run_id = ? AND lease_owner = ? AND status = 'running'",
                (time.time() + lease_s, run_id, worker_id),
            )
            row = tx.fetchone("SELECT cancel_requested FROM api_runs WHERE run_id = ?", (run_id,))
        return n > 0, bool(row and row["cancel_requested"])

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

    def finish(
        self, run: dict[str, Any], worker_id: str, status: str, thread_status: str | None, error: str | None = None,
        interrupts: list[dict[str, Any]] | None = None,
    ) -> bool:
        """Record a run's outcome if this worker still owns it; False if the lease was lost.

        ``interrupts``: the thread's pending interrupts after the run (``[{"value", "id"}]``),
        kept on the thread row so pending approvals are listed without loading checkpoints."""
        now = iso_now()
        with self.db.transaction() as tx:
            n = tx.execute(
                "UPDATE api_runs SET status = ?, error = ?, lease_owner = NULL, lease_expires_at = NULL,"
                " updated_at = ?, finished_at = ? WHERE run_id = ? AND lease_owner = ? AND status = 'running'",
                (status, error, now, now, run["run_id"], worker_id),
            )
            if n:
                tx.execute("UPDATE api_threads SET interrupts = ? WHERE thread_id = ?",
                           (_dumps(interrupts) if interrupts else None, run["thread_id"]))
                if self._settle_thread(tx, run["thread_id"], thread_status) == "busy":
                    self._signal(tx)  # the thread's next queued run can go now
                self._signal(tx, run["run_id"])
        self.notify(run["run_id"])
        return n > 0

    def retry_later(
        self, run: dict[str, Any], worker_id: str, error: str, *, base: float, cap: float
    ) -> str | None:
        """After a transient failure: back to ``pending`` after a backoff, or ``dead`` once
        ``max_retries`` are used up. Returns the new status (None if the lease was lost)."""
        now = iso_now()
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT retries, max_retries FROM api_runs WHERE run_id = ? AND lease_owner = ?"
                f" AND status = 'running'{self._for_update}",
                (run["run_id"], worker_id),
            )
            if row is None:
                return None
            retries = row["retries"] + 1
            if retries > row["max_retries"]:
                tx.execute(
                    "UPDATE api_runs SET status = 'dead', dead_reason = ?, retries = ?, error = ?, lease_owner = NULL,"
                    " lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE run_id = ?",
                    (RETRIES_EXHAUSTED, retries, error, now, now, run["run_id"]),
                )
                if self._settle_thread(tx, run["thread_id"], "error") == "busy":
                    self._signal(tx)
                self._signal(tx, run["run_id"])
                status = "dead"
            else:
                tx.execute(
                    "UPDATE api_runs SET status = 'pending', retries = ?, error = ?, lease_owner = NULL,"
                    " lease_expires_at = NULL, available_at = ?, updated_at = ? WHERE run_id = ?",
                    (retries, error, time.time() + backoff_delay(retries, base, cap), now, run["run_id"]),
                )
                status = "pending"
        self.notify(run["run_id"])
        return status

    # -- stream events -------------------------------------------------------------------
    def append_events(self, run_id: str, start_seq: int, events: Iterable[tuple[str, Any]]) -> int:
        """Store stream events of a run from ``start_seq`` on; returns the next seq.

        Conflicting seqs (a resumed run re-emitting) are ignored so a reader never sees
        an event twice.
        """
        sql = "INSERT INTO api_run_events (run_id, seq, event, data) VALUES (?, ?, ?, ?) ON CONFLICT (run_id, seq) DO NOTHING"
        rows = [(run_id, start_seq + i, event, _dumps(data)) for i, (event, data) in enumerate(events)]
        if len(rows) == 1:  # the worker's case, once per step: one statement, one round trip
            self.db.execute(sql, rows[0])
        else:
            with self.db.transaction() as tx:
                for row in rows:
                    tx.execute(sql, row)
        seq = start_seq + len(rows)
        self.notify()
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

    # -- approval decisions ----------------------------------------------------------------
    def get_decision(self, thread_id: str, plan_hash: str) -> dict[str, Any] | None:
        """A decision already taken on this plan of the thread, if any."""
        with self.db.transaction() as tx:
            return tx.fetchone(
                "SELECT * FROM api_decisions WHERE thread_id = ? AND plan_hash = ?", (thread_id, plan_hash)
            )
