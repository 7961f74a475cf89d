"""The lease protocol of the workers: claim, heartbeat, finish, retry with backoff, dead letters.

A claim sets ``lease_owner`` and ``lease_expires_at``; the worker heartbeats every
``lease/3`` seconds. A run whose lease expired (the worker died or hung) is claimable
again and the new worker resumes it from the graph's last checkpoint, up to
``KEEL_WORKER_MAX_LEASE_EXPIRIES`` times. Finishing, retrying and heartbeating are
conditioned on still owning the lease, so a worker that lost its lease cannot overwrite
the new owner's outcome.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

from engine.queue.base import LEASE_EXPIRED_REPEATEDLY, RETRIES_EXHAUSTED, QueueBase, dumps, iso_now, run_row
from keel.retry import Backoff

__all__ = ["Claim", "Leases", "backoff_delay"]

log = logging.getLogger("keel.queue")


def backoff_delay(retry: int, base: float, cap: float, rnd: random.Random | None = None) -> float:
    """The delay before a run's retry ``retry`` (from 1): keel's one backoff
    (:class:`keel.retry.Backoff`, exponential with equal jitter, capped)."""
    return Backoff(base, cap).delay(retry, rnd)


@dataclass(frozen=True)
class Claim:
    """What one claim did: the run leased (or None), and the runs it dead-lettered instead of
    leasing because their lease had expired too often (for the caller to audit)."""

    run: dict[str, Any] | None
    dead_lettered: tuple[dict[str, Any], ...] = ()


class Leases(QueueBase):
    """How workers take, keep and give back runs."""

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
                claimed = run_row(tx.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (c["run_id"],)))
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
        out = run_row(tx.fetchone("SELECT * FROM api_runs WHERE run_id = ?", (run_id,)))
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

    def heartbeat_many(self, held: Sequence[tuple[str, str]], lease_s: float | None) -> dict[tuple[str, str], bool]:
        """Extend the leases of many runs at once (``(run_id, worker_id)`` pairs, one process's
        runs) by ``lease_s`` (None: only read their state): one transaction of two statements
        per 500 runs, where :meth:`heartbeat` spends one transaction per run. Returns
        ``{(run_id, worker_id): cancel_requested}`` for the pairs whose worker still owns the
        run; a pair missing from it lost its lease."""
        out: dict[tuple[str, str], bool] = {}
        for i in range(0, len(held), 500):
            chunk = list(held[i:i + 500])
            pairs = ", ".join("(?, ?)" for _ in chunk)
            flat = [x for pair in chunk for x in pair]
            with self.db.transaction() as tx:
                if lease_s is not None:
                    tx.execute(f"UPDATE api_runs SET lease_expires_at = ? WHERE status = 'running'"
                               f" AND (run_id, lease_owner) IN (VALUES {pairs})", (time.time() + lease_s, *flat))
                rows = tx.fetchall("SELECT run_id, lease_owner, status, cancel_requested FROM api_runs WHERE run_id IN ("
                                   + ", ".join("?" for _ in chunk) + ")", [r for r, _ in chunk])
            now = {r["run_id"]: r for r in rows}
            for run_id, worker_id in chunk:
                r = now.get(run_id)
                if r is not None and r["status"] == "running" and r["lease_owner"] == worker_id:
                    out[(run_id, worker_id)] = bool(r["cancel_requested"])
        return out

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
            next_run = False
            if n:
                tx.execute("UPDATE api_threads SET interrupts = ? WHERE thread_id = ?",
                           (dumps(interrupts) if interrupts else None, run["thread_id"]))
                if self._settle_thread(tx, run["thread_id"], thread_status) == "busy":
                    self._signal(tx)  # the thread's next queued run can go now
                    next_run = True
                self._signal(tx, run["run_id"])
        # its waiters; an idle worker only if the thread's next run can go (the finishing
        # worker claims again itself): a finished run does not wake every idle thread
        self.notify(run["run_id"], claimable=next_run)
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
        self.notify(run["run_id"], claimable=status == "dead")  # pending: due after its backoff (polled)
        return status
