"""A small relational-database seam: SQLite (embedded default) or Postgres.

Why not SQLAlchemy: keel's stores use a handful of plain statements that both engines
understand; a ``?``-to-``%s`` placeholder rewrite and a transaction context manager are
all the portability needed, and keeping the driver connections bare lets the same
psycopg pool be shared with LangGraph's PostgresSaver.

SQL written for this module uses ``?`` placeholders and the common subset of SQLite and
PostgreSQL (``INSERT … ON CONFLICT``, ``TEXT``, ``INTEGER``/``BIGINT``).

The pooled connections keep no session state, so ``KEEL_DATABASE_URL`` may name a connection
pooler in transaction mode (PgBouncer), where each transaction may run on another server
connection: with ``KEEL_DATABASE_PREPARED_STATEMENTS=false`` statements are never prepared
server-side (psycopg's ``prepare_threshold=None``; LangGraph's ``prepare_threshold=0``, keel's
default on a direct connection, prepares every statement, which a pooler that does not track
prepared statements answers with ``prepared statement "_pg3_0" does not exist``), and
locks are transaction-scoped. What needs a session of its own (LISTEN, the set-up lock) opens
:meth:`Database.connect_direct` on ``direct_url`` (``KEEL_DATABASE_DIRECT_URL``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import select
import sqlite3
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar
from collections.abc import Callable, Iterator, Sequence

from tenacity import RetryCallState

from keel.config import Settings
from keel.errors import DbErrorKind, StoreError, db_error_kind
from keel.retry import Backoff, RetryPolicy

__all__ = [
    "Database",
    "Tx",
    "IntegrityError",
    "StartupError",
    "open_database",
    "db_error_kind",
    "DbErrorKind",
    "retry_while_unavailable",
]

log = logging.getLogger("keel.db")

T = TypeVar("T")

_QMARK = re.compile(r"\?")


class IntegrityError(StoreError):
    """A constraint was violated (unique key, foreign key); raised for both engines."""

    code = "conflict"


class StartupError(StoreError):
    """A process could not start on its database: a configuration error (bad credentials,
    unknown database, malformed URL) or an outage longer than the start-up timeout. The
    message is one line meant for the operator."""

    code = "startup_failed"


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the affected row count."""

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """First row as a dict, or None."""

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """All rows as dicts."""


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        try:
            return self._c.execute(sql, tuple(params)).rowcount
        except sqlite3.IntegrityError as e:
            raise IntegrityError(str(e)) from None

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        row = self._c.execute(sql, tuple(params)).fetchone()
        return dict(row) if row is not None else None

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._c.execute(sql, tuple(params)).fetchall()]


def _pg(sql: str) -> str:
    return _QMARK.sub("%s", sql.replace("%", "%%"))


@contextmanager
def _integrity() -> Iterator[None]:
    """psycopg's constraint errors as keel's engine-neutral :class:`IntegrityError`."""
    import psycopg

    try:
        yield
    except psycopg.errors.IntegrityError as e:
        raise IntegrityError(str(e).splitlines()[0]) from None


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._c = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with _integrity():
            return self._c.execute(_pg(sql), tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with _integrity():
            return self._c.execute(_pg(sql), tuple(params)).fetchone()

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with _integrity():
            return list(self._c.execute(_pg(sql), tuple(params)).fetchall())


def _alive(conn: Any) -> bool:
    """Whether a pooled (idle) connection still works.

    An idle connection has nothing to read unless the server closed it (a restart, a
    failover, ``pg_terminate_backend``) or sent it a notice; only then is a round trip
    spent to tell which. The usual case costs one non-blocking ``poll()``.
    """
    if conn.closed:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    if not poller.poll(0):
        return True
    try:
        conn.execute("")
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=1)
def _live_pool_class() -> type:
    from psycopg_pool import ConnectionPool, PoolTimeout

    class LivePool(ConnectionPool):
        """A pool that never lends a connection the server has closed, and that reconnects
        while anyone waits.

        After a server (or pooler) restart every idle connection is dead; each would fail
        the first statement of whoever borrows it (an HTTP 500, a failed run). ``getconn``
        discards such connections at once and takes the next (or a new one). psycopg_pool's
        own ``check`` hook would do the same but sleep a growing backoff (1 s, 2 s, 4 s…)
        after each dead connection, stalling requests for seconds after a restart.

        psycopg_pool gives up a failed connection attempt after ``reconnect_timeout`` and
        starts a new one only on the next checkout, not for the clients already waiting: a
        server down a little longer than that would leave them waiting their whole timeout
        although it is back. So a checkout waits in slices of ``_WAIT_SLICE_S``, each
        asking the pool anew (and so starting a connection attempt if none is under way).
        """

        def getconn(self, timeout: float | None = None) -> Any:
            total = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + total
            while True:
                left = deadline - time.monotonic()
                try:
                    conn = super().getconn(max(0.001, min(left, _WAIT_SLICE_S)))
                except PoolTimeout:
                    if time.monotonic() < deadline:
                        continue
                    raise PoolTimeout(f"couldn't get a connection after {total:.2f} sec") from None
                if _alive(conn):
                    return conn
                conn.close()
                self.putconn(conn)  # discarded and replaced by the pool

    return LivePool


_DEFAULT_POOL_TIMEOUT_S: float = Settings.model_fields["db_pool_timeout_s"].default
_DEFAULT_CONNECT_TIMEOUT_S: int = Settings.model_fields["db_connect_timeout_s"].default
_WAIT_SLICE_S = 0.5
"""How long a checkout waits before asking the pool again (see ``LivePool``)."""
_RECONNECT_WINDOW_S = 2.0
"""How long the pool keeps rescheduling one failed connection attempt (see ``Database``):
two attempts, a second apart; checkouts start new ones after."""

_PG_CONNECTION: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
"""A session of its own (:meth:`Database.connect_direct`): nothing prepared, nothing to leak."""
"""Every keel connection to Postgres: autocommit (``transaction()`` opens its own), and no
server-side prepared statement (a transaction pooler would lend another server connection)."""


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection or the pooler's server connection failed (reset,
    closed by a restart, a pooler's error such as ``query_wait_timeout``), not that the pool
    had no connection for us (``PoolTimeout``: the caller already waited its pool timeout)."""
    from psycopg_pool import PoolTimeout

    return not isinstance(exc, PoolTimeout) and db_error_kind(exc) == "unavailable"


_BEGIN_RETRY = RetryPolicy(Backoff(0.05, 0.4), max_attempts=3, retry_on=_connection_lost)
"""A transaction whose BEGIN failed on a broken connection ran nothing: it is started again
on another connection (up to twice, 25-400 ms apart) instead of failing its caller. Once
BEGIN succeeded the body runs once; a failure later is the caller's to retry. A single read
(:meth:`Database.fetchone`) is repeated the same way, reading twice being harmless."""


_BEGIN_RETRY_REST = RetryPolicy(_BEGIN_RETRY.backoff, max_attempts=(_BEGIN_RETRY.max_attempts or 3) - 1,
                                retry_on=_connection_lost)


def _begin_retrying(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` under :data:`_BEGIN_RETRY`, its first attempt outside tenacity: building
    and running tenacity's loop costs more CPU than a healthy database's round trip, on every
    transaction (``bench/README.md`` (h)); only a failure on a lost connection enters it."""
    try:
        return fn(*args)
    except BaseException as e:
        if not _connection_lost(e):
            raise
    time.sleep(_BEGIN_RETRY.backoff.delay(1))
    return _BEGIN_RETRY_REST.retrying()(fn, *args)


class Database:
    """A connection source for one SQLite file or one Postgres database.

    ``transaction()`` yields a :class:`Tx`; it commits on success and rolls back on any
    exception, so a store's write is all-or-nothing.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_timeout_s: float = _DEFAULT_POOL_TIMEOUT_S,
        connect_timeout_s: int = _DEFAULT_CONNECT_TIMEOUT_S,
        direct_url: str | None = None,
        pool_size: int = 10,
        prepared_statements: bool = True,
    ) -> None:
        self.url = url
        self._options: dict[str, Any] = {"pool_timeout_s": pool_timeout_s, "connect_timeout_s": connect_timeout_s,
                                         "direct_url": direct_url, "prepared_statements": prepared_statements}
        self._lanes: dict[str, Database] = {}
        self._lanes_lock = threading.Lock()
        self.is_postgres = url.startswith(("postgres://", "postgresql://"))
        self.direct_url = direct_url or url
        """The same database without a pooler in between (Postgres): sessions of their own."""
        self._connect_timeout_s = int(connect_timeout_s)
        self._pool: Any = None
        self._local = threading.local()
        if self.is_postgres:
            from psycopg.rows import dict_row

            self._pool = _live_pool_class()(
                url,
                min_size=1,
                max_size=pool_size,
                # prepared on first use (LangGraph's setting: about 40 % less server CPU per run,
                # measured by bench.capacity); never behind a transaction-mode pooler that does not
                # track them (KEEL_DATABASE_PREPARED_STATEMENTS=false)
                kwargs={**_PG_CONNECTION, "prepare_threshold": 0 if prepared_statements else None,
                        "row_factory": dict_row, "connect_timeout": int(connect_timeout_s)},
                # a checkout waits this long, then fails (an HTTP 503 with Retry-After) rather
                # than holding a request for psycopg_pool's default 30 s during an outage
                timeout=pool_timeout_s,
                # psycopg_pool retries a failed connection with a doubling delay (1, 2, 4 … s)
                # until this gives up; then the next checkout starts a fresh attempt at once.
                # With its default (5 min) a pool whose database was down for a minute could
                # wait another minute after the database is back before reconnecting, every
                # checkout meanwhile failing (503) after the pool timeout.
                reconnect_timeout=_RECONNECT_WINDOW_S,
                open=True,
            )
        else:
            path = url.removeprefix("sqlite:///")
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._path = path

    @property
    def pool(self) -> Any:
        """The psycopg pool (Postgres only); shared with PostgresSaver."""
        return self._pool

    def lane(self, name: str, size: int) -> Database:
        """The same database on a small pool of its own (Postgres; SQLite: this one), created
        once per ``name``: work that must never queue behind the main pool's users (a
        worker's claims and heartbeats, which would otherwise wait behind checkpoint writes
        and a lease lapse), nor make them wait. Closed with this database."""
        if not self.is_postgres:
            return self
        with self._lanes_lock:
            lane = self._lanes.get(name)
            if lane is None:
                lane = self._lanes[name] = Database(self.url, pool_size=size, **self._options)
            return lane

    def connect_direct(self, *, autocommit: bool = True) -> Any:
        """A new psycopg connection on :attr:`direct_url` (Postgres), for a session that must
        stay on one server connection (LISTEN, a lock held across transactions); the
        caller closes it."""
        import psycopg

        return psycopg.connect(self.direct_url, **{**_PG_CONNECTION, "autocommit": autocommit},
                               connect_timeout=self._connect_timeout_s)

    def _begun(self) -> tuple[ExitStack, Any]:
        """A pooled connection with its transaction begun; closing the stack commits (or rolls
        back, on an exception) and returns the connection."""
        with ExitStack() as stack:
            conn = stack.enter_context(self._pool.connection())
            stack.enter_context(conn.transaction())
            return stack.pop_all(), conn

    def _sqlite(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def within(self, tx: Tx | None) -> Iterator[Tx]:
        """``tx`` when the caller already holds one (the work joins it, all or nothing with
        the caller's), else a transaction of its own."""
        if tx is not None:
            yield tx
        else:
            with self.transaction() as own:
                yield own

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """An all-or-nothing unit of work."""
        if self.is_postgres:
            # not in pipeline mode: measured here, entering and syncing a pipeline costs
            # more CPU and wall time than the BEGIN and COMMIT round trips it saves on
            # loopback (0.55 against 0.35 ms for a one-read transaction)
            stack, conn = _begin_retrying(self._begun)
            with _integrity(), stack:
                yield _PgTx(conn)
        else:
            conn = self._sqlite()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """One read statement as its own transaction: on Postgres one round trip
        (autocommit), where ``transaction()`` spends three (BEGIN, the read, COMMIT). Read
        again on another connection if the connection broke (``_BEGIN_RETRY``)."""
        if self.is_postgres:
            return _begin_retrying(self._read_one, _pg(sql), tuple(params))
        with self.transaction() as tx:
            return tx.fetchone(sql, params)

    def _read_one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._pool.connection() as conn, _integrity():
            return conn.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write statement as its own transaction (atomic by itself); the row count."""
        if self.is_postgres:
            with self._pool.connection() as conn, _integrity():
                return conn.execute(_pg(sql), tuple(params)).rowcount
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def executescript(self, sql: str) -> None:
        """Run DDL statements separated by ``;`` in one transaction, once per database.

        On Postgres a script already applied (its SHA-256 is in ``keel_schema``) is skipped:
        ``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on its table *before* it finds
        the index there, so a process starting next to live traffic (a worker replacing a
        dead one) would block every writer of the table and could deadlock with them.
        """
        digest = hashlib.sha256(sql.encode()).hexdigest()
        if self.is_postgres and self._applied(digest):
            return
        with self.transaction() as tx:
            for stmt in (s.strip() for s in sql.split(";")):
                if stmt:
                    tx.execute(stmt)
            if self.is_postgres:
                tx.execute("CREATE TABLE IF NOT EXISTS keel_schema (digest TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
                tx.execute("INSERT INTO keel_schema (digest, applied_at) VALUES (?, now()::text) ON CONFLICT DO NOTHING",
                           (digest,))

    def _applied(self, digest: str) -> bool:
        """Whether a script with this digest was applied (a plain read: no table locks)."""
        with self._pool.connection() as conn:
            if conn.execute("SELECT to_regclass('keel_schema') AS t").fetchone()["t"] is None:
                return False
            return conn.execute("SELECT 1 FROM keel_schema WHERE digest = %s", (digest,)).fetchone() is not None

    def close(self) -> None:
        """Release connections."""
        for lane in self._lanes.values():
            lane.close()
        if self._pool is not None:
            self._pool.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_DATABASES: dict[str, Database] = {}
_LOCK = threading.Lock()


def open_database(url: str, **options: Any) -> Database:
    """The process-wide :class:`Database` for ``url`` (one pool per URL); ``options``
    (timeouts, see :class:`Database`) apply when this call creates it."""
    with _LOCK:
        db = _DATABASES.get(url)
        if db is None:
            db = _DATABASES[url] = Database(url, **options)
        return db


# -- start-up against a database that may be down ------------------------------------------
# ``db_error_kind`` (unavailable / config / other) is keel.errors' one mapping of the drivers'
# exceptions, re-exported here where start-up uses it.


def _reason(exc: BaseException) -> str:
    """An exception as one short line for a log or an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def retry_while_unavailable(
    fn: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    base_s: float = 0.5,
    cap_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried with exponential backoff and jitter while the database is unavailable.

    For process start-up (``keel serve``, ``keel worker``): a database that is restarting,
    failing over or not up yet is waited for, up to ``timeout_s``, with one warning per retry
    (``database unavailable, retrying in Xs: <reason>``). A configuration error (bad
    credentials, unknown database, malformed URL) raises :class:`StartupError` at once, as
    does an outage outlasting ``timeout_s``; any other error propagates unchanged. ``fn`` must
    be safe to call again after a failure part-way (idempotent set-up).
    """
    def announce(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: database unavailable, retrying in %.1fs: %s", what, delay, _reason(exc) if exc else "?")

    # keel's one retry policy (doubling from base_s up to cap_s, equal jitter): processes that
    # failed together against one restarting server do not come back in lockstep
    policy = RetryPolicy(Backoff(base_s, cap_s), timeout_s=timeout_s, retry_on=lambda e: db_error_kind(e) == "unavailable")
    retrying = policy.retrying(sleep=sleep, before_sleep=announce)
    try:
        return retrying(fn)
    except Exception as e:
        kind = db_error_kind(e)
        if kind == "config":
            raise StartupError(f"database configuration error (check KEEL_DATABASE_URL): {_reason(e)}") from e
        if kind == "unavailable":
            raise StartupError(f"database still unavailable after {timeout_s:g}s: {_reason(e)}") from e
        raise
