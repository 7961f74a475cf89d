"""The process's wiring: stores, checkpointer, tools, guards and gateway from one Settings.

The CLI, the API, workers and batches each build a :class:`Runtime` from their
:class:`~keel.config.Settings` and hand it down; nothing reaches a process-wide one (the
Studio entry point, :func:`studio_context`, is the one exception: LangGraph's server
cannot pass keel's context). One runtime's psycopg pool serves the back office, the
audit log, the run queue and LangGraph's PostgresSaver. Graph nodes never see a
runtime: they get the narrow :class:`~graphs.context.SupportContext` it builds
(:meth:`Runtime.context`), passed as ``context=`` wherever a graph runs.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, UTC
from functools import cached_property
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import psycopg

from engine import registry
from engine.assistants import AssistantStore
from engine.checkpoints import open_checkpointer
from engine.crons import CronStore
from engine.memory import CustomerMemory
from engine.recordings import RunRecordings, recording_context
from engine.store import TenantStore, open_store
from engine.supply import supply_context
from engine.tracing import TracedJudge
from gateway.cache import ModelCache
from gateway.gateway import ModelGateway, gateway_from_settings
from graphs.context import SupportContext
from graphs.supply_state import SupplyContext
from guards.budgets import RunCaps, TenantTokenBudget
from guards.dlp import redact
from guards.pack import PolicyPack, load_policy
from guards.policy import PolicyEngine
from keel import db as _dbmod
from keel import telemetry
from keel.audit import AuditLog
from keel.config import PACKAGE_DIR, Settings, get_settings
from keel.db import Database, open_database
from keel.keys import KeyEncryption, Keyring
from keel.principals import PrincipalStore
from keel.threads import ThreadIndex
from tools.backoffice import BackOffice
from tools.cache import ToolCache
from tools.fixtures import parse_fixtures_text
from tools.refund_history import RefundHistory
from tools.registry import TOOLS, cards
from tools.runner import ToolRunner

__all__ = ["Runtime", "studio_context", "DEMO_FIXTURES", "DEMO_TICKETS", "DEMO_NOW", "SETUP_LOCK"]

log = logging.getLogger("keel.runtime")

SETUP_LOCK = 0x6B65656C  # "keel"
"""Advisory-lock key that schema set-up of concurrent first starts serializes on (Postgres)."""

DEMO_FIXTURES = PACKAGE_DIR / "demo" / "fixtures.json"
"""The bundled demo back office (loaded when no back office exists yet)."""
DEMO_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""The bundled demo data's "today"."""
DEMO_TICKETS = PACKAGE_DIR / "demo" / "tickets.jsonl"
"""The bundled demo tickets."""


class Runtime:
    """Everything a run needs besides its state, built lazily from :class:`Settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._graphs: dict[str, Any] = {}
        self._setup_depth = 0

    # -- stores -------------------------------------------------------------------
    @cached_property
    def db_url(self) -> str:
        """URL of keel's own database (back office, ledger, audit, keys, queue)."""
        if self.settings.database_url:
            return self.settings.database_url
        return f"sqlite:///{(self.settings.data_dir / 'keel.db').resolve()}"

    @cached_property
    def db_direct_url(self) -> str:
        """The same database without a pooler in between (``KEEL_DATABASE_DIRECT_URL``, else
        :attr:`db_url`): the set-up lock's and the queue listener's sessions."""
        return self.settings.database_direct_url or self.db_url

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Serialize schema set-up across processes (Postgres); re-entrant within one runtime.

        ``CREATE TABLE IF NOT EXISTS`` and PostgresSaver's migrations race when two
        processes start on a fresh database. The lock is a transaction advisory lock, held
        by a connection of its own (the direct URL's) whose transaction stays open during
        the set-up: a session lock would outlive its transaction on the server connection
        a transaction pooler lent (PgBouncer), which the next client handed that connection
        would then hold too. It is taken by polling ``pg_try_advisory_xact_lock``: a session
        blocked in ``pg_advisory_xact_lock`` would hold a snapshot that PostgresSaver's
        ``CREATE INDEX CONCURRENTLY`` waits on forever (the read committed transaction that
        holds the lock holds no snapshot between its statements). A waiter probes the lock
        outside any transaction (in autocommit the lock taken is released at once) and opens
        a transaction only to take it once free: waiting processes pin no server connection
        of a pooler that the set-up of the lock's holder would need.
        """
        with self._lock:
            if self._setup_depth or not self.settings.is_postgres:
                self._setup_depth += 1
                try:
                    yield
                finally:
                    self._setup_depth -= 1
                return
            with psycopg.connect(self.db_direct_url, autocommit=True, prepare_threshold=None,
                                 connect_timeout=self.settings.db_connect_timeout_s) as conn:
                _take_setup_lock(conn)
                self._setup_depth += 1
                try:
                    yield
                finally:
                    self._setup_depth -= 1
                    _advisory_unlock(conn)

    @cached_property
    def db(self) -> Database:
        """keel's database, with every store's tables created."""
        db = open_database(self.db_url, pool_timeout_s=self.settings.db_pool_timeout_s,
                           connect_timeout_s=self.settings.db_connect_timeout_s,
                           direct_url=self.settings.database_direct_url,
                           prepared_statements=self.settings.database_prepared_statements)
        with self.setup_lock():
            # the refund holds after the back office (an index of theirs is on its refunds)
            for store in (BackOffice(db), RefundHistory(db), AuditLog(db, redact=redact), PrincipalStore(db),
                          ThreadIndex(db)):
                store.setup()
            TenantTokenBudget(db, 0).setup()
            ModelCache(db).setup()
        return db

    @cached_property
    def backoffice(self) -> BackOffice:
        """The sandbox business systems."""
        return BackOffice(self.db)

    @cached_property
    def refunds(self) -> RefundHistory:
        """keel's refunds of each customer (refund velocity facts, holds, the per-customer lock)."""
        return RefundHistory(self.db)

    @cached_property
    def audit(self) -> AuditLog:
        """The hash-chained audit log; every row's data goes through the DLP guard's redaction."""
        return AuditLog(self.db, redact=redact)

    @cached_property
    def principals(self) -> PrincipalStore:
        """Users, roles and API keys."""
        return PrincipalStore(self.db, clock=self.settings.clock)

    @cached_property
    def threads(self) -> ThreadIndex:
        """Run status by tenant (pending approvals, escalations)."""
        return ThreadIndex(self.db)

    # -- guards, tools, models --------------------------------------------------------
    @cached_property
    def policy(self) -> PolicyPack:
        """The policy pack in force (``support-v1`` unless ``KEEL_POLICY_FILE`` says otherwise), as
        ``KEEL_ENV`` applies it (its ``[env.<name>]`` allowlists and overrides)."""
        return load_policy(self.settings.policy_path(), tools=TOOLS).for_env(self.settings.env)

    @cached_property
    def policy_engine(self) -> PolicyEngine:
        """Deterministic policy evaluation."""
        return PolicyEngine(self.policy, cards())

    @cached_property
    def caps(self) -> RunCaps:
        """Per-run caps (tool calls, wall clock, retries) from the policy pack."""
        return RunCaps.from_pack(self.policy)

    @cached_property
    def tokens(self) -> TenantTokenBudget:
        """Daily quotas (model tokens, runs) of each tenant and user, from the policy pack."""
        return TenantTokenBudget.from_pack(self.db, self.policy, audit=self.audit)

    @cached_property
    def tools(self) -> ToolRunner:
        """The tool runner (allowlists, authorization, ledger, rate limit, timeout, retries)."""
        return ToolRunner(
            self.backoffice,
            timeout_s=self.settings.tool_timeout_s,
            rate_per_minute=self.settings.tool_rate_per_minute,
            max_retries=self.policy.budgets.max_retries,
            dry_run_side_effects=self.policy.dry_run_side_effects(self.settings.env),
            cache=ToolCache(self.db),  # reads declared with cache_ttl_s; side effects invalidate (tools.cache)
        )

    @cached_property
    def gateway(self) -> ModelGateway:
        """The model gateway (local deterministic provider unless configured otherwise)."""
        return gateway_from_settings(self.settings, wall_clock_s=self.policy.budgets.wall_clock_s,
                                     remaining=lambda tenant: self.tokens.remaining(tenant, self.settings.clock()),
                                     cache=ModelCache(self.db))  # rules with cache_ttl_s only (gateway.cache)

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
        """The configured plan-signing key (the console's session secret derives from it)."""
        return self.settings.signing_key()

    @cached_property
    def keyring(self) -> Keyring:
        """Plan-signing keys (:mod:`keel.keys`): the active one signs, every unretired one verifies."""
        cfg = self.settings
        # no key configured on a shared database: every server's data dir would generate its own
        # key and refuse the others' plans, so the ring generates one key they all share
        shared = self.db.is_postgres and cfg.plan_signing_key is None and cfg.plan_signing_key_file is None
        current_kek, previous_keks = cfg.key_encryption_keys()  # generated keys are stored encrypted under it
        ring = Keyring(self.db, self.signing_key(), shared_default=shared,
                       kek=KeyEncryption(current_kek, previous_keks), require_encryption=cfg.env == "prod")
        with self.setup_lock():
            return ring.setup()

    def role_of(self, tenant: str, user: str) -> str | None:
        """A user's role in the tenant (keel's directory), or None if the user is unknown."""
        p = self.principals.get(tenant, user)
        return p.role if p is not None else None

    # -- the graphs' run context ----------------------------------------------------------
    def support_context(self) -> SupportContext:
        """What the support graph's nodes may use, for one run, from this runtime's parts.

        Built per run (a few references): the same objects the runtime holds at that
        moment, so an extension or a test that wraps ``runtime.tools.call`` or replaces
        ``runtime.gateway`` changes what the next run's nodes call. Its model answers, tool
        results, store reads and clock are recorded for replay (:mod:`engine.recordings`)."""
        ctx = SupportContext(
            policy=self.policy,
            policy_engine=TracedJudge(self.policy_engine),  # a policy.decide span per plan (engine.tracing)
            caps=self.caps,
            gateway=self.gateway,
            tools=self.tools,
            backoffice=self.backoffice,
            refunds=self.refunds,
            audit=self.audit,
            run_index=self.threads,
            quotas=self.tokens,
            role_of=self.role_of,
            clock=self.now,
            quota_clock=self.settings.clock,
            signing_key=self.keyring,
            memory=self.memory if self.policy.memory is not None else None,  # a pack without [memory] keeps none
        )
        return recording_context(ctx, self.recordings)

    @cached_property
    def recordings(self) -> RunRecordings:
        """Recordings of support runs (``run_recordings``), what ``keel replay-trace`` replays."""
        store = RunRecordings(self.db)
        with self.setup_lock():
            store.setup()
        return store

    def context(self, graph_id: str = "support") -> Any:
        """The ``context=`` to run graph ``graph_id`` with: the context its schema declares,
        built from this runtime (None for a graph that declares none, such as an extension's)."""
        schema = getattr(self.graph(graph_id), "context_schema", None)
        if schema is None:
            return None
        if schema is SupportContext:
            return self.support_context()
        if schema is SupplyContext:
            return supply_context(self)
        raise TypeError(f"graph {graph_id!r} declares context {schema.__name__}, which keel's runtime cannot build")

    # -- fixtures -----------------------------------------------------------------------
    def ensure_fixtures(self) -> None:
        """Load ``KEEL_FIXTURES`` (or the demo fixtures) if that tenant has no back office yet."""
        path = self.settings.fixtures or DEMO_FIXTURES
        parsed = parse_fixtures_text(Path(path).read_text())
        if parsed.fixtures is None:
            raise ValueError(f"{path}: " + "; ".join(f"line {e.line}: {e.message}" for e in parsed.errors))
        if not self.backoffice.has_tenant(parsed.fixtures.tenant):
            self.backoffice.load_fixtures(parsed.fixtures)

    # -- checkpoints and graphs -----------------------------------------------------
    @cached_property
    def checkpointer(self) -> Any:
        """SqliteSaver by default, the lease-fenced PostgresSaver on Postgres; ``setup()`` done once."""
        saver = open_checkpointer(self.db, self.settings.data_dir)
        with self.setup_lock():
            saver.setup()
        return saver

    def graph(self, graph_id: str = "support", config: dict[str, Any] | None = None) -> Any:
        """The compiled graph ``graph_id`` (any graph of ``langgraph.json``, see
        :mod:`engine.registry`) on this runtime's checkpointer; run it with
        ``context=self.context(graph_id)``. A factory's graph is built once for reading
        state, and again from ``config`` for each run that passes one (as LangGraph's server
        calls it per run)."""
        if config is not None and registry.is_factory(graph_id):
            return self._with_store(registry.build(graph_id, self, self.checkpointer, config))
        with self._lock:
            g = self._graphs.get(graph_id)
            if g is None:
                g = self._graphs[graph_id] = self._with_store(registry.build(graph_id, self, self.checkpointer))
            return g

    @cached_property
    def store(self) -> Any:
        """LangGraph's store on keel's database (all tenants; see :mod:`engine.store`)."""
        base = open_store(self.db, self.settings.data_dir)
        with self.setup_lock():
            base.setup()
        return base

    @cached_property
    def memory(self) -> CustomerMemory:
        """Customers' long-term memory in the store, governed by the pack's ``[memory]`` (:mod:`engine.memory`)."""
        return CustomerMemory(self.store, self.audit, self.policy.memory, self.now)

    @cached_property
    def assistants(self) -> AssistantStore:
        """Tenants' assistants and their versions (``/assistants``)."""
        with self.setup_lock():
            return AssistantStore(self.db)

    @cached_property
    def crons(self) -> CronStore:
        """Scheduled runs (``/runs/crons``), fired by the workers."""
        with self.setup_lock():
            return CronStore(self.db)

    def _with_store(self, graph: Any) -> Any:
        """A compiled graph whose nodes reach the store (``runtime.store``) as the run's tenant."""
        if getattr(graph, "store", None) is None:
            graph.store = TenantStore(self.store)
        return graph

    def close(self) -> None:
        """Release connections (tests, CLI exit)."""
        if "recordings" in self.__dict__:
            self.recordings.close()  # rows still queued for the writer
        if "db" in self.__dict__:
            # spans that ended a moment ago wait in the writer's batch (keel.telemetry): written
            # while this runtime's database is still open, not dropped with its pool
            telemetry.flush_store(2.0)
        if "checkpointer" in self.__dict__ and not self.db.is_postgres:
            self.checkpointer.conn.close()
        if "store" in self.__dict__ and not self.db.is_postgres:
            self.store.conn.close()
        if "db" in self.__dict__:
            self.db.close()
            _dbmod._DATABASES.pop(self.db_url, None)


_TRY_SETUP_LOCK = f"SELECT pg_try_advisory_xact_lock({SETUP_LOCK:d})"
"""No parameter, so the simple query protocol: an extended-protocol query would leave its
portal, and with it a snapshot, open in the lock's transaction."""


def _take_setup_lock(conn: Any) -> None:
    """Take the set-up lock in a transaction left open on ``conn`` (autocommit)."""
    while True:
        if conn.execute(_TRY_SETUP_LOCK).fetchone()[0]:  # free just now (autocommit: released again)
            conn.execute("BEGIN")
            if conn.execute(_TRY_SETUP_LOCK).fetchone()[0]:
                return
            conn.execute("ROLLBACK")  # another process was quicker
        time.sleep(0.05)


def _advisory_unlock(conn: Any) -> None:
    """Release the set-up lock by ending its transaction (it wrote nothing); a session the
    server already ended (a restart during set-up) released it by ending, and its error
    must not hide the one that ended it."""
    if conn.closed:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        log.debug("set-up lock: the session ended before its unlock", exc_info=True)


_STUDIO: Runtime | None = None
_STUDIO_LOCK = threading.Lock()


def studio_context() -> SupportContext:
    """The support context of the Studio entry point (:mod:`graphs.studio`), the one
    process-wide runtime left: built from ``KEEL_*`` settings on first use, with
    ``KEEL_FIXTURES`` (or the demo fixtures) loaded if their tenant has no back office yet.
    LangGraph's server runs that graph and cannot pass keel's context itself."""
    global _STUDIO
    with _STUDIO_LOCK:
        if _STUDIO is None:
            rt = Runtime(get_settings())
            rt.ensure_fixtures()
            _STUDIO = rt
        return _STUDIO.support_context()
