"""keel's own refunds of a customer, issued and awaiting approval: the facts behind the
policy's ``[refund.velocity]`` rule.

Why a store: the policy engine is pure, so the I/O that tells it what a customer already
got happens here, and it hands plain records on. Two sources:

- **executed**: the back office's ``refunds`` rows, which only the ``issue_refund`` tool
  writes (with the run clock as ``created_at``), in the transaction of its ledger row.
  Fixture history (``orders.refunded_cents``) has no rows and no dates, and is not counted.
- **pending**: ``refund_holds``, one row per refund action of a plan that went to
  approval, written by POLICY_CHECK. A hold counts only while keel's run index says its
  thread still waits on that very plan (status ``awaiting_approval``, same plan hash),
  so an approved, rejected, edited or escalated plan stops counting without anyone
  clearing its rows.

A run never counts against itself: its own thread's holds, and the refunds its own plan
issued (their ids derive from the plan's idempotency keys), are left out.

Concurrency: :meth:`RefundHistory.lock` serializes one customer's refund decisions for
the rest of a transaction (a Postgres transaction-level advisory lock; SQLite's
``BEGIN IMMEDIATE`` already serializes writers). The tool runner calls the execute
node's re-check under it, inside the refund's own transaction, so two runs racing
cannot both read "nothing refunded yet" and both pay out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from keel.db import Database, Tx

from .backoffice import iso_z
from .contracts import derived_id

__all__ = ["HeldRefund", "RefundHistory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refund_holds (
  tenant TEXT NOT NULL, thread_id TEXT NOT NULL, plan_hash TEXT NOT NULL, action_index INTEGER NOT NULL,
  customer_id TEXT NOT NULL, order_id TEXT NOT NULL, amount_cents BIGINT NOT NULL, requested_at TEXT NOT NULL,
  PRIMARY KEY (tenant, thread_id, plan_hash, action_index));
CREATE INDEX IF NOT EXISTS refund_holds_by_customer ON refund_holds (tenant, customer_id);
CREATE INDEX IF NOT EXISTS refunds_by_customer ON refunds (tenant, customer_id)
"""

HeldRefund = tuple[int, str, int]
"""``(action index, order id, amount in cents)`` of a refund in a plan awaiting approval."""

_MARGIN = timedelta(days=1)
"""Executed refunds are read from a day before the period: ``created_at`` is compared as
text in SQL, which a sub-second suffix can order wrongly; the engine filters exactly."""


def _lock_key(tenant: str, customer_id: str) -> int:
    """A signed 64-bit advisory-lock key for one customer of one tenant."""
    digest = hashlib.sha256(f"keel-refund\x00{tenant}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class RefundHistory:
    """Executed and pending refunds by customer, on keel's database (which holds the run index)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> None:
        """Create the holds table and the indexes (idempotent; after the back office's tables)."""
        self.db.executescript(_SCHEMA)

    def lock(self, tx: Tx, tenant: str, customer_id: str) -> None:
        """Hold the customer's refund lock until ``tx`` ends (waits for another holder)."""
        if self.db.is_postgres:
            tx.fetchone("SELECT pg_advisory_xact_lock(?) AS locked", (_lock_key(tenant, customer_id),))

    def hold(self, tenant: str, thread_id: str, plan_hash: str, customer_id: str,
             refunds: Iterable[HeldRefund], now: datetime) -> None:
        """Record the refunds of a plan that now waits for approval (replacing the thread's
        earlier holds: a thread waits on one plan at a time)."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM refund_holds WHERE tenant = ? AND thread_id = ?", (tenant, thread_id))
            for index, order_id, amount in refunds:
                tx.execute(
                    "INSERT INTO refund_holds (tenant, thread_id, plan_hash, action_index, customer_id, order_id,"
                    " amount_cents, requested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (tenant, thread_id, plan_hash, index, customer_id, order_id, amount, iso_z(now)),
                )

    def recent(
        self,
        tenant: str,
        customer_id: str,
        since: datetime,
        *,
        exclude_thread: str = "",
        exclude_keys: Sequence[str] = (),
        tx: Tx | None = None,
    ) -> list[dict[str, Any]]:
        """The customer's refunds: executed from ``since`` on (and some before: the engine
        applies the period exactly) and pending, as ``{order_id, amount_cents, state, at}``.

        ``exclude_thread``'s holds and the refunds issued under ``exclude_keys`` (the
        asking run's own idempotency keys) are left out.
        """
        own = {derived_id("RF", tenant, k) for k in exclude_keys}
        with self.db.within(tx) as t:
            issued = t.fetchall(
                "SELECT id, order_id, amount_cents, created_at FROM refunds"
                " WHERE tenant = ? AND customer_id = ? AND created_at >= ? ORDER BY created_at, id",
                (tenant, customer_id, iso_z(since - _MARGIN)),
            )
            pending = t.fetchall(
                "SELECT h.order_id, h.amount_cents, h.requested_at FROM refund_holds h"
                " JOIN run_index r ON r.thread_id = h.thread_id AND r.tenant = h.tenant AND r.plan_hash = h.plan_hash"
                " WHERE h.tenant = ? AND h.customer_id = ? AND h.thread_id <> ? AND r.status = 'awaiting_approval'"
                " ORDER BY h.requested_at, h.thread_id, h.action_index",
                (tenant, customer_id, exclude_thread),
            )
        return [
            *({"order_id": r["order_id"], "amount_cents": int(r["amount_cents"]), "state": "executed",
               "at": r["created_at"]} for r in issued if r["id"] not in own),
            *({"order_id": r["order_id"], "amount_cents": int(r["amount_cents"]), "state": "pending",
               "at": r["requested_at"]} for r in pending),
        ]
