"""The API's threads: a tenant's conversations with a graph, and their busy/idle status."""

from __future__ import annotations

import json
import uuid
from typing import Any

from engine.queue.base import NotFound, QueueBase, ThreadBusy, dumps, iso_now, thread_row
from keel.db import IntegrityError

__all__ = ["ThreadStore"]


class ThreadStore(QueueBase):
    """Create, find, page, update and delete a tenant's threads."""

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
                    (tid, tenant, graph_id, created_by, dumps(meta), now, now),
                )
        except IntegrityError:
            existing = self.get_thread(tenant, tid)
            if existing is not None and if_exists == "do_nothing":
                return existing, False
            raise
        return self.get_thread(tenant, tid), True  # type: ignore[return-value]

    def get_thread(self, tenant: str, thread_id: str) -> dict[str, Any] | None:
        """The tenant's thread, or None (another tenant's thread is None too)."""
        return thread_row(self.db.fetchone("SELECT * FROM api_threads WHERE thread_id = ? AND tenant = ?",
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
                return [thread_row(r) for r in tx.fetchall(sql, params)]  # type: ignore[misc]
        sql += by
        with self.db.transaction() as tx:
            rows = [thread_row(r) for r in tx.fetchall(sql, params)]
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
                (dumps(meta), iso_now(), thread_id),
            )
        return self.get_thread(tenant, thread_id)  # type: ignore[return-value]

    def mark_state_written(self, tenant: str, thread_id: str, status: str) -> dict[str, Any]:
        """After a state write from outside a run: the thread's status (unless a run took it
        meanwhile) and ``updated_at``."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE api_threads SET status = CASE WHEN status = 'busy' THEN status ELSE ? END, updated_at = ?"
                " WHERE thread_id = ? AND tenant = ?",
                (status, iso_now(), thread_id, tenant),
            )
        thread = self.get_thread(tenant, thread_id)
        if thread is None:
            raise NotFound(thread_id)
        return thread

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
            # the thread's traces (keel.telemetry): the request spans that queued its runs too
            tx.execute("DELETE FROM keel_spans WHERE trace_id IN (SELECT trace_id FROM keel_spans WHERE thread_id = ?)",
                       (thread_id,))
            tx.execute("DELETE FROM api_decisions WHERE thread_id = ?", (thread_id,))
            tx.execute("DELETE FROM api_threads WHERE thread_id = ?", (thread_id,))
