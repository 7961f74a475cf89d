"""A toy tool, declared exactly as a new tool is: one module with its models, implementation,
what VERIFY re-reads and how a reviewer previews it (see ``tools.declaration``).

``add_gift_note`` attaches a note to an order that has not shipped, in a table of its own
(``toy_gift_notes``, created by :func:`create_table`): nothing in keel knows about it
except through this declaration.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from keel.db import Database, Tx
from keel.types import StrictModel
from tools.backoffice import BackOffice
from tools.contracts import RecordId, ToolEnv, ToolError, ToolInput, derived_id
from tools.declaration import RecordChange, Verify, tool

TABLE = (
    "CREATE TABLE IF NOT EXISTS toy_gift_notes (tenant TEXT NOT NULL, id TEXT NOT NULL, order_id TEXT NOT NULL,"
    " note TEXT NOT NULL, PRIMARY KEY (tenant, id))"
)


def create_table(db: Database) -> None:
    """The toy tool's own table (a real tool's schema would be part of its back office)."""
    with db.transaction() as tx:
        tx.execute(TABLE)


def notes(bo: BackOffice, tenant: str, order_id: str) -> dict[str, str]:
    """The gift notes of an order by id."""
    with bo.db.transaction() as tx:
        rows = tx.fetchall("SELECT id, note FROM toy_gift_notes WHERE tenant = ? AND order_id = ?", (tenant, order_id))
    return {r["id"]: r["note"] for r in rows}


class GiftNoteInput(ToolInput):
    """Attach a gift note to an order that has not shipped."""

    order_id: RecordId
    """Order id."""
    note: str = Field(min_length=1, max_length=200)
    """The note's text."""


class GiftNoteOutput(StrictModel):
    """The note attached."""

    note_id: str
    order_id: str
    note: str


def _read(bo: BackOffice, tenant: str, args: GiftNoteInput) -> dict[str, Any]:
    return {"notes": notes(bo, tenant, args.order_id)}


def _preview(bo: BackOffice, tenant: str, args: GiftNoteInput) -> list[RecordChange]:
    order = bo.get_order(tenant, args.order_id)
    shown = None if order is None else {"id": order["id"], "status": order["status"]}
    return [RecordChange(kind="order", id=args.order_id, before=shown, after={}),
            RecordChange.new("gift_note", order_id=args.order_id, note=args.note)]


@tool(
    side_effect=True, operation="gift_note", routes=("orders",),
    verify=Verify(read=_read, holds=lambda rec, args, out: rec["notes"].get(out.note_id) == args.note),
    preview=_preview,
)
def add_gift_note(bo: BackOffice, tx: Tx, env: ToolEnv, args: GiftNoteInput) -> GiftNoteOutput:
    """Insert the note (one per idempotency key: its id is derived from the key)."""
    order = bo.get_order(env.tenant, args.order_id, tx)
    if order is None:
        raise ToolError("not_found", "order not found")
    if order["customer_id"] != env.customer_id:
        raise ToolError("not_owner", "order does not belong to the ticket's customer")
    if order["status"] not in ("placed", "paid"):
        raise ToolError("already_shipped", f"order is {order['status']}")
    note_id = derived_id("GN", env.tenant, env.idempotency_key or "")
    tx.execute("INSERT INTO toy_gift_notes (tenant, id, order_id, note) VALUES (?, ?, ?, ?)",
               (env.tenant, note_id, args.order_id, args.note))
    return GiftNoteOutput(note_id=note_id, order_id=args.order_id, note=args.note)
