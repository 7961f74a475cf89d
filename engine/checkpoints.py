"""Checkpoint stores: LangGraph's savers as keel opens them, and the lease fence.

SQLite (``SqliteSaver``, a file in the data dir) by default; on Postgres a
:class:`LeaseFencedSaver` on keel's own pool, whose writes for a leased run commit only
while the run's worker still holds its lease (:mod:`engine.queue`).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from langgraph.checkpoint.postgres import PostgresSaver, _internal
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.errors import DivisionByZero
from psycopg.rows import dict_row

from graphs.state import STATE_MODELS
from keel.db import Database
from keel.errors import KeelError

__all__ = ["LeaseLost", "LeaseFencedSaver", "open_checkpointer", "serializer"]


class LeaseLost(KeelError):
    """A worker tried to write a checkpoint of a run whose lease another worker now holds."""

    code = "lease_lost"
    """Not retryable: the run is the new lease owner's now, not this worker's to retry."""


_FENCE_SQL = (
    "SELECT 1 / (SELECT COUNT(*) FROM (SELECT 1 FROM api_runs WHERE run_id = %s AND lease_owner = %s"
    " AND status = 'running' FOR SHARE) AS owned) AS owned"
)
"""Locks the run row FOR SHARE if this worker still owns the lease, else fails the
transaction (division by zero: no row), so no write queued after it can commit."""


class LeaseFencedSaver(PostgresSaver):
    """PostgresSaver whose writes for a leased run commit only while the lease is held.

    A worker (:mod:`engine.worker`) puts ``run_id`` and ``lease_owner`` in the run config's
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
                    # the check and the writes after it: one round trip, one transaction. The
                    # pooled connection is in autocommit, so everything sent before the
                    # pipeline's Sync (at its exit) is one implicit transaction: the row lock
                    # is held until the writes commit, and the check failing (an error rather
                    # than a row to test) skips and rolls back every write after it. An explicit
                    # ``conn.transaction()`` here would add two more Syncs (psycopg nests a
                    # pipeline around and inside it), each a round trip, on every write.
                    stack.enter_context(conn.pipeline())
                else:
                    stack.enter_context(conn.transaction())
                cur = stack.enter_context(conn.cursor(binary=True, row_factory=dict_row))
                cur.execute(_FENCE_SQL, key)
                yield cur
        except DivisionByZero:
            raise LeaseLost(f"run {key[0]}: lease no longer held by {key[1]}") from None



def serializer() -> JsonPlusSerializer:
    """LangGraph's checkpoint serializer, rebuilding only LangGraph's safe types and keel's
    state models.

    Support state holds pydantic models (:mod:`graphs.state`); the serializer stores each
    with its class and rebuilds it on load. LangGraph's default rebuilds *any* class a
    checkpoint names (with a warning that this will be blocked), so whoever can write a
    checkpoint row could make a worker import and call what it likes. keel passes an explicit
    allowlist instead (LangGraph's strict mode plus keel's models): any other class comes back
    as its field dict, which the nodes' accessors parse (``nodes.common.plan_of`` …) and a
    graph with a pydantic state schema validates again on its way in.
    """
    return JsonPlusSerializer(allowed_msgpack_modules=STATE_MODELS)


def open_checkpointer(db: Database, data_dir: Path) -> Any:
    """The checkpoint store for keel's database ``db`` (``setup()`` is the caller's, under its
    set-up lock): a :class:`LeaseFencedSaver` on ``db``'s pool on Postgres, else a
    ``SqliteSaver`` in ``data_dir/checkpoints.db``."""
    if db.is_postgres:
        saver = LeaseFencedSaver(db.pool, serde=serializer())
        # PostgresSaver serializes all its queries behind one lock, which guards a single
        # shared connection; keel hands it a pool (a connection per caller), so the lock
        # would only make a process's worker and request threads wait for each other's
        # checkpoint reads and writes
        saver.lock = nullcontext()
        return saver
    path = (data_dir / "checkpoints.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return SqliteSaver(conn, serde=serializer())
