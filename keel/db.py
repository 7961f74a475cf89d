"""A small relational-database seam: SQLite (embedded default) or Postgres.

Why not SQLAlchemy: keel's stores use a handful of plain statements that both engines
understand; a ``?``-to-``%s`` placeholder rewrite and a transaction context manager are
all the portability needed, and keeping the driver connections bare lets the same
psycopg pool be shared with LangGraph's PostgresSaver.

SQL written for this module uses ``?`` placeholders and the common subset of SQLite and
PostgreSQL (``INSERT … ON CONFLICT``, ``TEXT``, ``INTEGER``/``BIGINT``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import select
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

__all__ = ["Database", "Tx", "IntegrityError", "open_database"]

_QMARK = re.compile(r"\?")


class IntegrityError(Exception):
    """A constraint was violated (unique key, foreign key); raised for both engines."""


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
    from psycopg_pool import ConnectionPool

    class LivePool(ConnectionPool):
        """A pool that never lends a connection the server has closed.

        After a server restart every idle connection is dead; each would fail the first
        statement of whoever borrows it (an HTTP 500, a failed run). ``getconn`` discards
        such connections at once and takes the next (or a new one). psycopg_pool's own
        ``check`` hook would do the same but sleep a growing backoff (1 s, 2 s, 4 s…)
        after each dead connection, stalling requests for seconds after a restart.
        """

        def getconn(self, timeout: float | None = None) -> Any:
            for _ in range(self.max_size):
                conn = super().getconn(timeout)
                if _alive(conn):
                    return conn
                conn.close()
                self.putconn(conn)  # discarded and replaced by the pool
            return super().getconn(timeout)

    return LivePool


class Database:
    """A connection source for one SQLite file or one Postgres database.

    ``transaction()`` yields a :class:`Tx`; it commits on success and rolls back on any
    exception, so a store's write is all-or-nothing.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_postgres = url.startswith(("postgres://", "postgresql://"))
        self._pool: Any = None
        self._local = threading.local()
        if self.is_postgres:
            from psycopg.rows import dict_row

            self._pool = _live_pool_class()(
                url,
                min_size=1,
                max_size=10,
                kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
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
    def transaction(self) -> Iterator[Tx]:
        """An all-or-nothing unit of work."""
        if self.is_postgres:
            # not in pipeline mode: measured here, entering and syncing a pipeline costs
            # more CPU and wall time than the BEGIN and COMMIT round trips it saves on
            # loopback (0.55 against 0.35 ms for a one-read transaction)
            with self._pool.connection() as conn, _integrity():
                with conn.transaction():
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
        (autocommit), where ``transaction()`` spends three (BEGIN, the read, COMMIT)."""
        if self.is_postgres:
            with self._pool.connection() as conn, _integrity():
                return conn.execute(_pg(sql), tuple(params)).fetchone()
        with self.transaction() as tx:
            return tx.fetchone(sql, params)

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
        if self._pool is not None:
            self._pool.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_DATABASES: dict[str, Database] = {}
_LOCK = threading.Lock()


def open_database(url: str) -> Database:
    """The process-wide :class:`Database` for ``url`` (one pool per URL)."""
    with _LOCK:
        db = _DATABASES.get(url)
        if db is None:
            db = _DATABASES[url] = Database(url)
        return db
