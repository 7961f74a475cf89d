"""The sandbox back office: the "business systems" the support tools read and change.

Why a database and not dicts: the tools' side effects and their idempotency-ledger rows
must commit in one transaction, survive a restart and stay exactly-once across threads
and processes; the same tables work on the embedded SQLite store and on Postgres.

Every table is keyed by ``(tenant, id)`` and every query filters on the tenant, so a
record of another tenant is simply not found. Read methods return plain JSON-able dicts
shaped like the fixture records (datetimes as ISO 8601 strings ending in ``Z``). Writes
happen only through the tools (:mod:`tools.contracts`), apart from :meth:`load_fixtures`.
"""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from keel.db import Database, Tx

from .cache import TOOL_CACHE_DDL, invalidate_tenant
from .fixtures import Fixtures
from .search import SearchHit, article_index

__all__ = ["BackOffice", "TABLES", "iso_z"]

TABLES: tuple[str, ...] = (
    "customers",
    "orders",
    "subscriptions",
    "payments",
    "refunds",
    "reships",
    "password_resets",
    "articles",
    "tool_ledger",
)
"""Every back-office table; :meth:`BackOffice.count_rows` accepts only these names."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
  tenant TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL,
  identity_level INTEGER NOT NULL, locked INTEGER NOT NULL, mfa_enabled INTEGER NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS orders (
  tenant TEXT NOT NULL, id TEXT NOT NULL, customer_id TEXT NOT NULL, status TEXT NOT NULL,
  total_cents BIGINT NOT NULL, refunded_cents BIGINT NOT NULL, currency TEXT NOT NULL,
  placed_at TEXT NOT NULL, delivered_at TEXT, carrier_status TEXT NOT NULL,
  shipping_address TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (tenant, customer_id);
CREATE TABLE IF NOT EXISTS subscriptions (
  tenant TEXT NOT NULL, id TEXT NOT NULL, customer_id TEXT NOT NULL, plan TEXT NOT NULL,
  status TEXT NOT NULL, period_end TEXT NOT NULL, cancelled_at TEXT,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS payments (
  tenant TEXT NOT NULL, id TEXT NOT NULL, order_id TEXT NOT NULL, customer_id TEXT NOT NULL,
  amount_cents BIGINT NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL,
  captured_at TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS refunds (
  tenant TEXT NOT NULL, id TEXT NOT NULL, order_id TEXT NOT NULL, customer_id TEXT NOT NULL,
  amount_cents BIGINT NOT NULL, currency TEXT NOT NULL, reason TEXT, created_at TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS reships (
  tenant TEXT NOT NULL, id TEXT NOT NULL, order_id TEXT NOT NULL, customer_id TEXT NOT NULL,
  reason TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS password_resets (
  tenant TEXT NOT NULL, id TEXT NOT NULL, customer_id TEXT NOT NULL, email TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS articles (
  tenant TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
  PRIMARY KEY (tenant, id));
CREATE TABLE IF NOT EXISTS tool_ledger (
  idempotency_key TEXT PRIMARY KEY, tenant TEXT NOT NULL, tool TEXT NOT NULL,
  args_hash TEXT NOT NULL, result_json TEXT NOT NULL, created_at TEXT NOT NULL)
"""


def iso_z(value: datetime | None) -> str | None:
    """A datetime as ISO 8601 in UTC with a ``Z`` suffix (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _customer(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "email": row["email"],
        "identity_level": int(row["identity_level"]),
        "account": {"locked": bool(row["locked"]), "mfa_enabled": bool(row["mfa_enabled"])},
    }


def _order(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "customer_id", "status", "total_cents", "refunded_cents", "currency", "placed_at",
            "delivered_at", "carrier_status", "shipping_address")
    out = {k: row[k] for k in keys}
    out["total_cents"] = int(out["total_cents"])
    out["refunded_cents"] = int(out["refunded_cents"])
    return out


def _subscription(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "customer_id", "plan", "status", "period_end")}


def _payment(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "order_id", "customer_id", "amount_cents", "currency", "status", "captured_at")}
    out["amount_cents"] = int(out["amount_cents"])
    out["refunded_cents"] = int(row["refunded_cents"])
    return out


class BackOffice:
    """One back office (all tenants) on a :class:`keel.db.Database`.

    Read methods take an optional ``tx`` so a tool can read and write in the one
    transaction that also records its idempotency-ledger row.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> None:
        """Create the tables if they do not exist (idempotent, both engines). The refund holds
        read with them are :class:`tools.refund_history.RefundHistory`'s, set up after these."""
        self.db.executescript(_SCHEMA)
        self.db.executescript(TOOL_CACHE_DDL)  # the read cache's generations: this store's writes bump them
        article_index(self.db).setup()  # the articles' full-text index and the synonym table

    def load_fixtures(self, fixtures: Fixtures) -> None:
        """Replace the tenant's records (and its ledger) with ``fixtures``, in one transaction."""
        t = fixtures.tenant
        with self.db.transaction() as tx:
            for table in TABLES:
                tx.execute(f"DELETE FROM {table} WHERE tenant = ?", (t,))
            invalidate_tenant(tx, t)  # every cached read of the tenant (tools.cache) is stale
            for c in fixtures.customers:
                tx.execute(
                    "INSERT INTO customers (tenant, id, name, email, identity_level, locked, mfa_enabled)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (t, c.id, c.name, c.email, c.identity_level, int(c.account.locked), int(c.account.mfa_enabled)),
                )
            for o in fixtures.orders:
                tx.execute(
                    "INSERT INTO orders (tenant, id, customer_id, status, total_cents, refunded_cents, currency,"
                    " placed_at, delivered_at, carrier_status, shipping_address)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (t, o.id, o.customer_id, o.status, o.total_cents, o.refunded_cents, o.currency,
                     iso_z(o.placed_at), iso_z(o.delivered_at), o.carrier_status, o.shipping_address),
                )
                tx.execute(
                    "INSERT INTO payments (tenant, id, order_id, customer_id, amount_cents, currency, status,"
                    " captured_at) VALUES (?, ?, ?, ?, ?, ?, 'captured', ?)",
                    (t, f"PAY-{o.id}", o.id, o.customer_id, o.total_cents, o.currency, iso_z(o.placed_at)),
                )
            for s in fixtures.subscriptions:
                tx.execute(
                    "INSERT INTO subscriptions (tenant, id, customer_id, plan, status, period_end)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (t, s.id, s.customer_id, s.plan, s.status, iso_z(s.period_end)),
                )
            for a in fixtures.articles:
                tx.execute("INSERT INTO articles (tenant, id, title, body) VALUES (?, ?, ?, ?)", (t, a.id, a.title, a.body))
            article_index(self.db).set_synonyms(tx, t, fixtures.synonyms)

    def has_tenant(self, tenant: str) -> bool:
        """Whether any customer or article of ``tenant`` is loaded."""
        with self.db.transaction() as tx:
            row = tx.fetchone(
                "SELECT (SELECT COUNT(*) FROM customers WHERE tenant = ?)"
                " + (SELECT COUNT(*) FROM articles WHERE tenant = ?) AS n",
                (tenant, tenant),
            )
        return bool(row and int(row["n"]))

    def get_customer(self, tenant: str, customer_id: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """A customer like a fixture record, or None."""
        with self.db.within(tx) as t:
            row = t.fetchone("SELECT * FROM customers WHERE tenant = ? AND id = ?", (tenant, customer_id))
        return _customer(row) if row else None

    def get_account(self, tenant: str, customer_id: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """Login state of a customer: ``{customer_id, email, identity_level, locked, mfa_enabled}``."""
        c = self.get_customer(tenant, customer_id, tx)
        if c is None:
            return None
        return {"customer_id": c["id"], "email": c["email"], "identity_level": c["identity_level"], **c["account"]}

    def get_order(self, tenant: str, order_id: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """An order like a fixture record (status may also be ``cancelled``), or None."""
        with self.db.within(tx) as t:
            row = t.fetchone("SELECT * FROM orders WHERE tenant = ? AND id = ?", (tenant, order_id))
        return _order(row) if row else None

    def list_orders(self, tenant: str, customer_id: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """A customer's orders, oldest first."""
        with self.db.within(tx) as t:
            rows = t.fetchall(
                "SELECT * FROM orders WHERE tenant = ? AND customer_id = ? ORDER BY placed_at, id", (tenant, customer_id)
            )
        return [_order(r) for r in rows]

    def get_subscription(self, tenant: str, subscription_id: str, tx: Tx | None = None) -> dict[str, Any] | None:
        """A subscription like a fixture record, or None."""
        with self.db.within(tx) as t:
            row = t.fetchone("SELECT * FROM subscriptions WHERE tenant = ? AND id = ?", (tenant, subscription_id))
        return _subscription(row) if row else None

    def list_subscriptions(self, tenant: str, customer_id: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """A customer's subscriptions."""
        with self.db.within(tx) as t:
            rows = t.fetchall(
                "SELECT * FROM subscriptions WHERE tenant = ? AND customer_id = ? ORDER BY id", (tenant, customer_id)
            )
        return [_subscription(r) for r in rows]

    def list_payments(
        self, tenant: str, customer_id: str, order_id: str | None = None, tx: Tx | None = None
    ) -> list[dict[str, Any]]:
        """A customer's captured payments (one per order), each with its order's refunded total."""
        sql = (
            "SELECT p.*, o.refunded_cents FROM payments p JOIN orders o ON o.tenant = p.tenant AND o.id = p.order_id"
            " WHERE p.tenant = ? AND p.customer_id = ?"
        )
        params: list[Any] = [tenant, customer_id]
        if order_id is not None:
            sql += " AND p.order_id = ?"
            params.append(order_id)
        with self.db.within(tx) as t:
            rows = t.fetchall(sql + " ORDER BY p.captured_at, p.id", params)
        return [_payment(r) for r in rows]

    def list_refunds(self, tenant: str, order_id: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """Refunds issued by the tools on an order, oldest first."""
        with self.db.within(tx) as t:
            rows = t.fetchall(
                "SELECT id, order_id, customer_id, amount_cents, currency, reason, created_at FROM refunds"
                " WHERE tenant = ? AND order_id = ? ORDER BY created_at, id",
                (tenant, order_id),
            )
        return [{**r, "amount_cents": int(r["amount_cents"])} for r in rows]

    def list_reships(self, tenant: str, order_id: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """Replacement shipments created for an order."""
        with self.db.within(tx) as t:
            return t.fetchall(
                "SELECT id, order_id, customer_id, reason, status, created_at FROM reships"
                " WHERE tenant = ? AND order_id = ? ORDER BY created_at, id",
                (tenant, order_id),
            )

    def list_password_resets(self, tenant: str, customer_id: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """Password-reset links sent to a customer."""
        with self.db.within(tx) as t:
            return t.fetchall(
                "SELECT id, customer_id, email, created_at FROM password_resets"
                " WHERE tenant = ? AND customer_id = ? ORDER BY created_at, id",
                (tenant, customer_id),
            )

    def articles(self, tenant: str, tx: Tx | None = None) -> list[dict[str, Any]]:
        """The tenant's knowledge-base articles ``{id, title, body}``, by id."""
        with self.db.within(tx) as t:
            return t.fetchall("SELECT id, title, body FROM articles WHERE tenant = ? ORDER BY id", (tenant,))

    def search_articles(self, tenant: str, query: str, limit: int = 3, tx: Tx | None = None) -> list[SearchHit]:
        """The tenant's articles relevant to ``query``, best first (:mod:`tools.search`)."""
        with self.db.within(tx) as t:
            return article_index(self.db).search(t, tenant, query, limit)

    def count_rows(self, table: str, tenant: str) -> int:
        """Rows of one tenant in one back-office table (for tests and verification)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        with self.db.transaction() as tx:
            row = tx.fetchone(f"SELECT COUNT(*) AS n FROM {table} WHERE tenant = ?", (tenant,))
        return int(row["n"]) if row else 0
