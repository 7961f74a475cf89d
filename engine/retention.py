"""Checkpoint retention: keep the checkpoint store bounded without touching live work.

LangGraph saves a checkpoint after every step of every run and never deletes one, so
the store grows with every run. ``keel prune`` (:func:`prune`) removes the history of
*finished* runs only:

- ``ttl_days``: threads finished longer ago than that lose their whole checkpoint
  history (``delete_thread``; on Postgres ``PostgresSaver.prune(strategy="delete")``,
  the same for a batch of threads in one transaction). The run-index row and the audit log stay.
- ``keep_latest``: the other finished threads keep only their latest checkpoint (what
  ``get_state`` reads) with its pending writes and the blobs it references; older
  checkpoints, their writes and unreferenced blobs go. History and replay of those
  older steps go with them.

A thread is *finished* when keel's run index says ``completed``, ``escalated`` or
``rejected`` **and** its latest checkpoint agrees: no next node, no pending interrupt.
Threads waiting for approval, running, dead-lettered, or with a queued or running API
run are never touched. Both checks are made per thread just before it is pruned; the
Postgres keep-latest prune reads each thread on one snapshot (LangGraph's
``PostgresSaver.prune``), the SQLite one under a write lock, and neither deletes a
checkpoint newer than the head it saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from typing import Any
from collections.abc import Iterable, Sequence

from engine.recordings import erase_thread_recordings
from engine.runtime import Runtime

__all__ = ["FINISHED", "PruneReport", "prune", "checkpoint_rows"]

FINISHED = ("completed", "escalated", "rejected")
"""Run-index statuses after which a run never continues."""

_CHUNK = 500


@dataclass
class PruneReport:
    """What a prune did (or, with ``dry_run``, would do)."""

    dry_run: bool
    ttl_days: float | None
    keep_latest: bool
    deleted_threads: list[str] = field(default_factory=list)
    """Threads whose whole checkpoint history was deleted (finished before the TTL)."""
    trimmed_threads: list[str] = field(default_factory=list)
    """Threads cut down to their latest checkpoint."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Threads the run index calls finished that were left alone, with why."""
    rows_before: dict[str, int] = field(default_factory=dict)
    """Checkpoint-table rows of the threads selected, before."""
    rows_removed: dict[str, int] = field(default_factory=dict)
    """Rows deleted (or that would be), by table."""
    recordings_removed: int = 0
    """Rows of ``run_recordings`` (``keel replay-trace``'s input) deleted with the expired threads."""

    def lines(self) -> list[str]:
        """A human-readable summary."""
        verb = "would delete" if self.dry_run else "deleted"
        out = []
        if self.ttl_days is not None:
            out.append(f"{verb} the checkpoint history of {len(self.deleted_threads)} threads finished more than "
                       f"{self.ttl_days:g} days ago")
        if self.keep_latest:
            out.append(f"{'would keep' if self.dry_run else 'kept'} only the latest checkpoint of "
                       f"{len(self.trimmed_threads)} finished threads")
        removed = ", ".join(f"{n} {t}" for t, n in self.rows_removed.items()) or "nothing"
        out.append(f"rows {'to remove' if self.dry_run else 'removed'}: {removed}")
        if self.recordings_removed:
            out.append(f"recordings removed with them: {self.recordings_removed} rows")
        if self.skipped:
            reasons: dict[str, int] = {}
            for why in self.skipped.values():
                reasons[why] = reasons.get(why, 0) + 1
            out.append("left alone: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())))
        return out


# -- the checkpoint tables of either saver ---------------------------------------------------------
def _tables(rt: Runtime) -> dict[str, str]:
    """Checkpoint table names by role (SqliteSaver keeps no separate blobs)."""
    if rt.db.is_postgres:
        return {"checkpoints": "checkpoints", "writes": "checkpoint_writes", "blobs": "checkpoint_blobs"}
    return {"checkpoints": "checkpoints", "writes": "writes"}


def _query(rt: Runtime, sql: str, params: Sequence[Any]) -> list[tuple]:
    """Read from the checkpoint store (Postgres: keel's database; SQLite: the saver's file)."""
    saver = rt.checkpointer
    if rt.db.is_postgres:
        with rt.db.pool.connection() as conn:
            return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in conn.execute(sql, params).fetchall()]
    with saver.lock:
        return [tuple(r) for r in saver.conn.execute(sql.replace("%s", "?"), params).fetchall()]


def _in(rt: Runtime, ids: Sequence[str]) -> tuple[str, list[Any]]:
    """``thread_id`` membership: ``= ANY(%s)`` on Postgres, ``IN (?, …)`` on SQLite."""
    if rt.db.is_postgres:
        return "thread_id = ANY(%s)", [list(ids)]
    return f"thread_id IN ({', '.join('?' * len(ids))})", list(ids)


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def checkpoint_rows(rt: Runtime, thread_ids: Sequence[str] | None = None) -> dict[str, int]:
    """Rows in each checkpoint table (all threads, or only ``thread_ids``)."""
    counts: dict[str, int] = {}
    for role, table in _tables(rt).items():
        if thread_ids is None:
            counts[role] = int(_query(rt, f"SELECT count(*) FROM {table}", ())[0][0])
            continue
        n = 0
        for chunk in _chunks(list(thread_ids)):
            cond, params = _in(rt, chunk)
            n += int(_query(rt, f"SELECT count(*) FROM {table} WHERE {cond}", params)[0][0])
        counts[role] = n
    return counts


def _checkpoint_counts(rt: Runtime, thread_ids: Sequence[str]) -> dict[str, int]:
    """Checkpoints per thread (threads without any are absent)."""
    out: dict[str, int] = {}
    for chunk in _chunks(list(thread_ids)):
        cond, params = _in(rt, chunk)
        for tid, n in _query(rt, f"SELECT thread_id, count(*) FROM checkpoints WHERE {cond} GROUP BY thread_id", params):
            out[str(tid)] = int(n)
    return out


def _kept_rows(rt: Runtime, thread_ids: Sequence[str]) -> dict[str, int]:
    """Rows keep-latest would leave: each namespace's head checkpoint, its writes, the blobs it references."""
    heads = ("SELECT DISTINCT ON (thread_id, checkpoint_ns) thread_id, checkpoint_ns, checkpoint_id, checkpoint "
             "FROM checkpoints WHERE {cond} ORDER BY thread_id, checkpoint_ns, checkpoint_id DESC")
    kept = {role: 0 for role in _tables(rt)}
    for chunk in _chunks(list(thread_ids)):
        cond, params = _in(rt, chunk)
        if rt.db.is_postgres:
            h = heads.format(cond=cond)
            kept["checkpoints"] += int(_query(rt, f"SELECT count(*) FROM ({h}) h", params)[0][0])
            kept["writes"] += int(_query(rt, f"SELECT count(*) FROM ({h}) h JOIN checkpoint_writes w ON w.thread_id = "
                                             "h.thread_id AND w.checkpoint_ns = h.checkpoint_ns AND w.checkpoint_id = "
                                             "h.checkpoint_id", params)[0][0])
            kept["blobs"] += int(_query(rt, f"SELECT count(*) FROM ({h}) h CROSS JOIN LATERAL jsonb_each_text("
                                            "h.checkpoint -> 'channel_versions') v JOIN checkpoint_blobs b ON b.thread_id"
                                            " = h.thread_id AND b.checkpoint_ns = h.checkpoint_ns AND b.channel = v.key"
                                            " AND b.version = v.value", params)[0][0])
        else:
            h = (f"SELECT thread_id, checkpoint_ns, max(checkpoint_id) AS checkpoint_id FROM checkpoints WHERE {cond}"
                 " GROUP BY thread_id, checkpoint_ns")
            kept["checkpoints"] += int(_query(rt, f"SELECT count(*) FROM ({h})", params)[0][0])
            kept["writes"] += int(_query(rt, f"SELECT count(*) FROM ({h}) h JOIN writes w ON w.thread_id = h.thread_id"
                                             " AND w.checkpoint_ns = h.checkpoint_ns AND w.checkpoint_id = h.checkpoint_id",
                                        params)[0][0])
    return kept


# -- which threads are safe --------------------------------------------------------------------------
def _finished_threads(rt: Runtime, tenant: str | None) -> list[dict[str, Any]]:
    sql = f"SELECT thread_id, status, updated_at FROM run_index WHERE status IN ({', '.join('?' * len(FINISHED))})"
    params: list[Any] = list(FINISHED)
    if tenant is not None:
        sql += " AND tenant = ?"
        params.append(tenant)
    with rt.db.transaction() as tx:
        return tx.fetchall(sql + " ORDER BY updated_at, thread_id", params)


def _busy_in_api(rt: Runtime, thread_ids: Sequence[str]) -> set[str]:
    """Threads with a queued or running run in keel's API queue (when that queue exists)."""
    exists_sql = ("SELECT to_regclass('api_runs') IS NOT NULL AS ok" if rt.db.is_postgres
                  else "SELECT count(*) > 0 AS ok FROM sqlite_master WHERE type = 'table' AND name = 'api_runs'")
    with rt.db.transaction() as tx:
        if not (tx.fetchone(exists_sql) or {}).get("ok"):
            return set()
    busy: set[str] = set()
    for chunk in _chunks(list(thread_ids)):
        with rt.db.transaction() as tx:
            rows = tx.fetchall(f"SELECT DISTINCT thread_id FROM api_runs WHERE status IN ('pending', 'running') AND "
                               f"thread_id IN ({', '.join('?' * len(chunk))})", list(chunk))
        busy.update(r["thread_id"] for r in rows)
    return busy


def _still_live(rt: Runtime, thread_id: str) -> str | None:
    """Why the thread's latest checkpoint says it is not finished (None: it is finished)."""
    snap = rt.graph("support").get_state({"configurable": {"thread_id": thread_id}})
    if snap.interrupts or any(t.interrupts for t in snap.tasks):
        return "interrupted"
    if snap.next:
        return "pending next node"
    return None


# -- pruning -------------------------------------------------------------------------------------------
def _keep_latest_sqlite(rt: Runtime, thread_id: str) -> None:
    """Delete all but each namespace's newest checkpoint of one thread, with their writes."""
    saver = rt.checkpointer
    with saver.lock:
        conn = saver.conn
        if conn.in_transaction:
            conn.commit()
        conn.execute("BEGIN IMMEDIATE")
        try:
            heads = conn.execute("SELECT checkpoint_ns, max(checkpoint_id) FROM checkpoints WHERE thread_id = ? "
                                 "GROUP BY checkpoint_ns", (thread_id,)).fetchall()
            for ns, head in heads:
                args = (thread_id, ns, head)
                conn.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id < ?", args)
                conn.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id < ?", args)
                conn.execute("UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread_id = ? AND checkpoint_ns = ?"
                             " AND checkpoint_id = ?", args)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def prune(
    rt: Runtime,
    *,
    ttl_days: float | None = None,
    keep_latest: bool = False,
    dry_run: bool = False,
    tenant: str | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Prune the checkpoint history of finished threads (see the module docstring).

    ``ttl_days`` compares with the run index's ``updated_at`` (the wall-clock time the run
    finished); ``now`` defaults to the wall clock.
    """
    if ttl_days is None and not keep_latest:
        raise ValueError("nothing to do: give ttl_days, keep_latest or both")
    if ttl_days is not None and ttl_days < 0:
        raise ValueError("ttl_days must not be negative")
    report = PruneReport(dry_run=dry_run, ttl_days=ttl_days, keep_latest=keep_latest)
    cutoff = None
    if ttl_days is not None:
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=ttl_days)).astimezone(UTC).isoformat()

    rows = _finished_threads(rt, tenant)
    counts = _checkpoint_counts(rt, [r["thread_id"] for r in rows])
    expire, trim = [], []
    for r in rows:
        n = counts.get(r["thread_id"], 0)
        if cutoff is not None and r["updated_at"] < cutoff:
            if n > 0:
                expire.append(r["thread_id"])
        elif keep_latest and n > 1:
            trim.append(r["thread_id"])

    # chunk by chunk, so a thread is pruned seconds after it was checked, not minutes
    removed = {role: 0 for role in _tables(rt)}
    before = {role: 0 for role in _tables(rt)}
    saver = rt.checkpointer
    for kind, ids in (("expire", expire), ("trim", trim)):
        for chunk in _chunks(ids):
            busy = _busy_in_api(rt, chunk)
            safe = []
            for tid in chunk:
                why = "with a queued or running API run" if tid in busy else _still_live(rt, tid)
                if why:
                    report.skipped[tid] = why
                else:
                    safe.append(tid)
            if not safe:
                continue
            (report.deleted_threads if kind == "expire" else report.trimmed_threads).extend(safe)
            rows_before = checkpoint_rows(rt, safe)
            if dry_run:
                left = _kept_rows(rt, safe) if kind == "trim" else {role: 0 for role in _tables(rt)}
            else:
                if rt.db.is_postgres:
                    # strategy="delete" is delete_thread for a batch of threads, in one transaction;
                    # keep_latest reads each thread on one snapshot and deletes nothing newer
                    saver.prune(safe, strategy="delete" if kind == "expire" else "keep_latest")
                elif kind == "expire":
                    for tid in safe:
                        saver.delete_thread(tid)
                else:
                    for tid in safe:
                        _keep_latest_sqlite(rt, tid)
                if kind == "expire":  # a thread with no checkpoint left cannot be replayed: its recording goes too
                    report.recordings_removed += sum(erase_thread_recordings(rt.db, tid) for tid in safe)
                left = checkpoint_rows(rt, safe)
            for role in removed:
                before[role] += rows_before[role]
                removed[role] += rows_before[role] - left[role]
    report.rows_before, report.rows_removed = before, removed
    return report
