"""Runs: queued on a thread under its multitask strategy, listed, cancelled, retried from the
dead letters; and the approval decisions they apply (idempotency of approvals)."""

from __future__ import annotations

import time
from typing import Any

from engine.queue.base import ACTIVE, NotCancellable, NotFound, QueueBase, ThreadBusy, dumps, iso_now, new_id, run_row
from keel.telemetry import queued_run_traceparent

__all__ = ["RunStore"]


class RunStore(QueueBase):
    """A tenant's runs and the decisions they carry."""

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
                " available_at, created_at, updated_at, traceparent)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rid, thread_id, tenant, assistant_id, graph_id, kind, dumps(payload), dumps(stream_mode or []),
                 dumps(metadata or {}), multitask_strategy, correlation_id, created_by, requester, max_retries,
                 time.time() + max(0.0, after_seconds), now, now,
                 queued_run_traceparent(tenant, thread_id, rid)),
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
        return run_row(self.db.fetchone("SELECT * FROM api_runs WHERE run_id = ? AND thread_id = ? AND tenant = ?",
                                     (run_id, thread_id, tenant)))

    def get_run_any(self, run_id: str) -> dict[str, Any] | None:
        """A run by id regardless of tenant (workers only)."""
        return run_row(self.db.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (run_id,)))

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
            return [run_row(r) for r in tx.fetchall(sql, params)]  # type: ignore[misc]

    def list_dead(self, tenant: str, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """The tenant's dead-lettered runs, newest first."""
        with self.db.transaction() as tx:
            rows = tx.fetchall(
                "SELECT * FROM api_runs WHERE tenant = ? AND status = 'dead' ORDER BY updated_at DESC, run_id"
                " LIMIT ? OFFSET ?",
                (tenant, limit, offset),
            )
        return [run_row(r) for r in rows]  # type: ignore[misc]

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

    def get_decision(self, thread_id: str, plan_hash: str) -> dict[str, Any] | None:
        """A decision already taken on this plan of the thread, if any."""
        with self.db.transaction() as tx:
            return tx.fetchone(
                "SELECT * FROM api_decisions WHERE thread_id = ? AND plan_hash = ?", (thread_id, plan_hash)
            )
