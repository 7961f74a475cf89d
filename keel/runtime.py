"""The process's wiring: stores, checkpointer, tools, guards and gateway from one Settings.

Graph nodes, the CLI, the API and workers all reach the outside world through a
:class:`Runtime`. One runtime exists per process and settings (``get_runtime``), so one
psycopg pool serves the back office, the audit log and LangGraph's PostgresSaver.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from keel.audit import AuditLog
from keel.config import PACKAGE_DIR, Settings, get_settings
from keel.db import Database, open_database
from keel.principals import PrincipalStore
from keel.threads import ThreadIndex

__all__ = ["Runtime", "LeaseLost", "get_runtime", "reset_runtime", "DEMO_FIXTURES", "DEMO_TICKETS", "DEMO_NOW"]

log = logging.getLogger("keel.runtime")

_SETUP_LOCK = 0x6B65656C  # "keel": advisory-lock key for schema set-up

DEMO_FIXTURES = PACKAGE_DIR / "demo" / "fixtures.json"
"""The bundled demo back office (loaded when no back office exists yet)."""
DEMO_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
"""The bundled demo data's "today"."""
DEMO_TICKETS = PACKAGE_DIR / "demo" / "tickets.jsonl"
"""The bundled demo tickets."""


class Runtime:
    """Everything a run needs besides its state, built lazily from :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._graphs: dict[str, Any] = {}
        self._fixtures_checked = False
        self._setup_depth = 0

    # -- stores -------------------------------------------------------------------
    @cached_property
    def db_url(self) -> str:
        """URL of keel's own database (back office, ledger, audit, keys, queue)."""
        if self.settings.database_url:
            return self.settings.database_url
        return f"sqlite:///{(self.settings.data_dir / 'keel.db').resolve()}"

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Serialize schema set-up across processes (Postgres); re-entrant within one runtime.

        ``CREATE TABLE IF NOT EXISTS`` and PostgresSaver's migrations race when two
        processes start on a fresh database. The lock is a session advisory lock taken by
        polling ``pg_try_advisory_lock``: a session blocked in ``pg_advisory_lock`` would
        hold a snapshot that PostgresSaver's ``CREATE INDEX CONCURRENTLY`` waits on forever.
        """
        with self._lock:
            if self._setup_depth or not self.settings.is_postgres:
                self._setup_depth += 1
                try:
                    yield
                finally:
                    self._setup_depth -= 1
                return
            import psycopg

            with psycopg.connect(self.db_url, autocommit=True,
                                 connect_timeout=self.settings.db_connect_timeout_s) as conn:
                while not conn.execute("SELECT pg_try_advisory_lock(%s)", (_SETUP_LOCK,)).fetchone()[0]:
                    time.sleep(0.05)
                self._setup_depth += 1
                try:
                    yield
                finally:
                    self._setup_depth -= 1
                    _advisory_unlock(conn)

    @cached_property
    def db(self) -> Database:
        """keel's database, with every store's tables created."""
        from guards.budgets import TenantTokenBudget
        from tools.backoffice import BackOffice

        db = open_database(self.db_url, pool_timeout_s=self.settings.db_pool_timeout_s,
                           connect_timeout_s=self.settings.db_connect_timeout_s)
        with self.setup_lock():
            for store in (BackOffice(db), AuditLog(db), PrincipalStore(db), ThreadIndex(db)):
                store.setup()
            TenantTokenBudget(db, 0).setup()
        return db

    @cached_property
    def backoffice(self):
        """The sandbox business systems."""
        from tools.backoffice import BackOffice

        return BackOffice(self.db)

    @cached_property
    def audit(self) -> AuditLog:
        """The hash-chained audit log."""
        return AuditLog(self.db)

    @cached_property
    def principals(self) -> PrincipalStore:
        """Users, roles and API keys."""
        return PrincipalStore(self.db)

    @cached_property
    def threads(self) -> ThreadIndex:
        """Run status by tenant (pending approvals, escalations)."""
        return ThreadIndex(self.db)

    # -- guards, tools, models --------------------------------------------------------
    @cached_property
    def policy(self):
        """The policy pack in force (``support-v1`` unless ``KEEL_POLICY_FILE`` says otherwise)."""
        from guards.policy import load_policy

        return load_policy(self.settings.policy_path())

    @cached_property
    def engine(self):
        """Deterministic policy evaluation."""
        from guards.policy import PolicyEngine

        return PolicyEngine(self.policy)

    @cached_property
    def caps(self):
        """Per-run caps (tool calls, wall clock, retries) from the policy pack."""
        from guards.budgets import RunCaps

        return RunCaps.from_pack(self.policy)

    @cached_property
    def tokens(self):
        """Daily quotas (model tokens, runs) of each tenant and user, from the policy pack."""
        from guards.budgets import TenantTokenBudget

        return TenantTokenBudget.from_pack(self.db, self.policy, audit=self.audit)

    @cached_property
    def tools(self):
        """The tool runner (allowlists, authorization, ledger, rate limit, timeout, retries)."""
        from tools.runner import ToolRunner

        return ToolRunner(
            self.backoffice,
            timeout_s=self.settings.tool_timeout_s,
            rate_per_minute=self.settings.tool_rate_per_minute,
            max_retries=self.policy.budgets.max_retries,
        )

    @cached_property
    def gateway(self):
        """The model gateway (local deterministic provider unless configured otherwise)."""
        from keel.gateway import gateway_from_settings

        return gateway_from_settings(self.settings)

    def now(self) -> datetime:
        """The run clock: ``KEEL_NOW`` if set; the demo data's day on the embedded demo.

        The bundled demo fixtures are dated around :data:`DEMO_NOW`; without a clock
        override an embedded store serving them (``langgraph dev``, ``keel serve``) runs
        on that day so their refund windows mean what the demo says.
        """
        if self.settings.now is None and self.settings.fixtures is None and not self.settings.is_postgres:
            return DEMO_NOW
        return self.settings.clock()

    def signing_key(self) -> bytes:
        """Plan-signing key."""
        return self.settings.signing_key()

    # -- fixtures -----------------------------------------------------------------------
    def ensure_fixtures(self) -> None:
        """Load ``KEEL_FIXTURES`` (or the demo fixtures) if that tenant has no back office yet."""
        from tools.fixtures import parse_fixtures_text

        path = self.settings.fixtures or DEMO_FIXTURES
        parsed = parse_fixtures_text(Path(path).read_text())
        if parsed.fixtures is None:
            raise ValueError(f"{path}: " + "; ".join(f"line {e.line}: {e.message}" for e in parsed.errors))
        if not self.backoffice.has_tenant(parsed.fixtures.tenant):
            self.backoffice.load_fixtures(parsed.fixtures)

    def ensure_fixtures_once(self) -> None:
        """:meth:`ensure_fixtures` on first call only (graphs served without keel's CLI)."""
        if not self._fixtures_checked:
            with self._lock:
                if not self._fixtures_checked:
                    self.ensure_fixtures()
                    self._fixtures_checked = True

    # -- checkpoints and graphs -----------------------------------------------------
    @cached_property
    def checkpointer(self):
        """SqliteSaver by default, PostgresSaver on Postgres; ``setup()`` done once."""
        if self.db.is_postgres:
            saver = _fenced_saver_class()(self.db.pool)
            # PostgresSaver serializes all its queries behind one lock, which guards a single
            # shared connection; keel hands it a pool (a connection per caller), so the lock
            # would only make a process's worker and request threads wait for each other's
            # checkpoint reads and writes
            saver.lock = nullcontext()
        else:
            from langgraph.checkpoint.sqlite import SqliteSaver

            path = (self.settings.data_dir / "checkpoints.db").resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            saver = SqliteSaver(conn)
        with self.setup_lock():
            saver.setup()
        return saver

    def graph(self, graph_id: str = "support"):
        """The compiled graph ``graph_id`` bound to this runtime and its checkpointer."""
        with self._lock:
            g = self._graphs.get(graph_id)
            if g is None:
                from graphs import GRAPH_BUILDERS

                try:
                    builder = GRAPH_BUILDERS[graph_id]
                except KeyError:
                    raise KeyError(f"unknown graph {graph_id!r}") from None
                g = self._graphs[graph_id] = builder(runtime=self).compile(checkpointer=self.checkpointer)
            return g

    def close(self) -> None:
        """Release connections (tests, CLI exit)."""
        if "checkpointer" in self.__dict__ and not self.db.is_postgres:
            self.checkpointer.conn.close()
        if "db" in self.__dict__:
            self.db.close()
            from keel import db as _dbmod

            _dbmod._DATABASES.pop(self.db_url, None)


def _advisory_unlock(conn: Any) -> None:
    """Release the set-up lock; a session the server already ended (a restart during
    set-up) released it by ending, and its error must not hide the one that ended it."""
    import psycopg

    if conn.closed:
        return
    try:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
    except psycopg.Error:
        log.debug("set-up lock: the session ended before its unlock", exc_info=True)


class LeaseLost(Exception):
    """A worker tried to write a checkpoint of a run whose lease another worker now holds."""

    transient = False


_FENCE_SQL = (
    "SELECT 1 / (SELECT COUNT(*) FROM (SELECT 1 FROM api_runs WHERE run_id = %s AND lease_owner = %s"
    " AND status = 'running' FOR SHARE) AS owned) AS owned"
)
"""Locks the run row FOR SHARE if this worker still owns the lease, else fails the
transaction (division by zero: no row), so no write queued after it can commit."""


@functools.lru_cache(maxsize=1)
def _fenced_saver_class() -> type:
    from langgraph.checkpoint.postgres import PostgresSaver, _internal
    from psycopg.errors import DivisionByZero
    from psycopg.rows import dict_row

    class LeaseFencedSaver(PostgresSaver):
        """PostgresSaver whose writes for a leased run commit only while the lease is held.

        A worker (``api.worker``) puts ``run_id`` and ``lease_owner`` in the run config's
        metadata. If its lease expired while it was still alive (a database outage longer
        than the lease, a long pause) another worker resumes the run from its last
        checkpoint; without a fence the first worker would go on writing checkpoints on
        the same thread, and its stale one could become the thread's latest (the run is
        recorded done while the thread reads "running"). Each checkpoint and pending-write
        insert of a leased run is therefore one transaction that first locks the run row
        ``FOR SHARE`` and checks the owner: a claim waits for it to commit, and a write
        after a claim raises :class:`LeaseLost` and writes nothing. Writes without a lease
        (CLI, tests, in-process use) are not fenced.
        """

        _fence = threading.local()
        """The (run id, lease owner) of the write this thread is making, if fenced."""

        def _fenced(self, config: Any, fn: Any, *args: Any) -> Any:
            md = config.get("metadata") or {}
            if not (md.get("lease_owner") and md.get("run_id")):
                return fn(config, *args)
            self._fence.key = (str(md["run_id"]), str(md["lease_owner"]))
            try:
                return fn(config, *args)
            finally:
                self._fence.key = None

        def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            return self._fenced(config, super().put, checkpoint, metadata, new_versions)

        def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            return self._fenced(config, super().put_writes, writes, task_id, task_path)

        @contextmanager
        def _cursor(self, *, pipeline: bool = False) -> Iterator[Any]:
            key = getattr(getattr(self, "_fence", None), "key", None)
            if key is None:
                with super()._cursor(pipeline=pipeline) as cur:
                    yield cur
                return
            try:
                with self.lock, _internal.get_connection(self.conn) as conn, ExitStack() as stack:
                    if self.supports_pipeline:
                        # the check and the writes after it: one round trip; the check fails
                        # the transaction with an error rather than returning a row to test
                        stack.enter_context(conn.pipeline())
                    stack.enter_context(conn.transaction())
                    cur = stack.enter_context(conn.cursor(binary=True, row_factory=dict_row))
                    cur.execute(_FENCE_SQL, key)
                    yield cur
            except DivisionByZero:
                raise LeaseLost(f"run {key[0]}: lease no longer held by {key[1]}") from None

    return LeaseFencedSaver


_RUNTIMES: dict[int, Runtime] = {}
_RLOCK = threading.Lock()
_CURRENT: Runtime | None = None


def get_runtime(settings: Settings | None = None) -> Runtime:
    """The process-wide runtime (built from the environment on first use)."""
    global _CURRENT
    with _RLOCK:
        if settings is None:
            if _CURRENT is None:
                _CURRENT = Runtime(get_settings())
            return _CURRENT
        _CURRENT = Runtime(settings)
        return _CURRENT


def reset_runtime() -> None:
    """Forget the process-wide runtime (tests)."""
    global _CURRENT
    with _RLOCK:
        if _CURRENT is not None:
            _CURRENT.close()
        _CURRENT = None
