"""Order tools: look-ups, tracking, cancels, address changes, reships."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from keel.db import Tx
from keel.types import StrictModel

from ..backoffice import BackOffice, iso_z
from ..contracts import RecordId, ToolEnv, ToolError, ToolInput
from ..declaration import RecordChange, Verify, tool
from ._common import new_id, own_order, require_one

__all__ = [
    "GetOrderInput", "OrderOutput", "get_order",
    "TrackShipmentInput", "TrackShipmentOutput", "track_shipment",
    "CancelOrderInput", "CancelOrderOutput", "cancel_order",
    "UpdateShippingAddressInput", "UpdateShippingAddressOutput", "update_shipping_address",
    "ReshipOrderInput", "ReshipOrderOutput", "reship_order",
]


class GetOrderInput(ToolInput):
    """Look up one order."""

    order_id: RecordId
    """Order id (``O-…``)."""


class OrderOutput(StrictModel):
    """An order, shaped like the fixture record (status may also be ``cancelled``)."""

    id: str
    """Order id."""
    customer_id: str
    """Owner."""
    status: Literal["placed", "paid", "shipped", "delivered", "cancelled"]
    """Fulfilment status."""
    total_cents: int
    """Order total."""
    refunded_cents: int
    """Refunded so far."""
    currency: str
    """ISO 4217 code."""
    placed_at: AwareDatetime
    """When placed."""
    delivered_at: AwareDatetime | None
    """When delivered, if it was."""
    carrier_status: str
    """Carrier's latest status text."""
    shipping_address: str
    """Where it ships."""


@tool(side_effect=False, routes=("billing", "orders"), cache_ttl_s=60)
def get_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetOrderInput) -> OrderOutput:
    """One of the customer's orders."""
    return OrderOutput.model_validate(own_order(bo, tx, env, args.order_id))


class TrackShipmentInput(ToolInput):
    """Where an order is, as the carrier reports it."""

    order_id: RecordId
    """Order id."""


class TrackShipmentOutput(StrictModel):
    """An order's shipping status, quoted in tracking answers."""

    order_id: str
    """Order id."""
    status: str
    """Fulfilment status."""
    carrier_status: str
    """Carrier's latest status text."""


@tool(side_effect=False, operation="track_order", routes=("orders",), cache_ttl_s=60)
def track_shipment(bo: BackOffice, tx: Tx, env: ToolEnv, args: TrackShipmentInput) -> TrackShipmentOutput:
    """An order's status and the carrier's latest status text."""
    order = own_order(bo, tx, env, args.order_id)
    return TrackShipmentOutput(order_id=order["id"], status=order["status"], carrier_status=order["carrier_status"])


def _order(bo: BackOffice, tenant: str, args: Any) -> dict[str, Any] | None:
    return bo.get_order(tenant, args.order_id)


# --------------------------------------------------------------------------- cancels


class CancelOrderInput(ToolInput):
    """Cancel an order that has not shipped."""

    order_id: RecordId
    """Order id."""


class CancelOrderOutput(StrictModel):
    """An order that was cancelled."""

    order_id: str
    """Order id."""
    status: Literal["cancelled"]
    """New status."""


def _cancel_preview(bo: BackOffice, tenant: str, args: CancelOrderInput) -> list[RecordChange]:
    order = _order(bo, tenant, args)
    payments = bo.list_payments(tenant, order["customer_id"], args.order_id) if order else []
    return [RecordChange.of("order", order, status="cancelled"),
            *(RecordChange.of("payment", p, status="voided") for p in payments)]


@tool(
    side_effect=True, operation="cancel_order", routes=("orders",),
    verify=Verify(read=_order, holds=lambda rec, args, out: rec["status"] == "cancelled"),
    preview=_cancel_preview,
)
def cancel_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: CancelOrderInput) -> CancelOrderOutput:
    """Cancel a ``placed`` or ``paid`` order and void its payment."""
    order = own_order(bo, tx, env, args.order_id)
    if order["status"] not in ("placed", "paid"):
        raise ToolError("not_cancellable", f"order is {order['status']}")
    changed = tx.execute(
        "UPDATE orders SET status = 'cancelled' WHERE tenant = ? AND id = ? AND status IN ('placed', 'paid')",
        (env.tenant, args.order_id),
    )
    require_one(changed)
    tx.execute("UPDATE payments SET status = 'voided' WHERE tenant = ? AND order_id = ?", (env.tenant, args.order_id))
    return CancelOrderOutput(order_id=args.order_id, status="cancelled")


# --------------------------------------------------------------------------- address changes


class UpdateShippingAddressInput(ToolInput):
    """Ship an order that has not shipped to another address."""

    order_id: RecordId
    """Order id."""
    new_address: str = Field(min_length=5, max_length=500)
    """The full new address."""


class UpdateShippingAddressOutput(StrictModel):
    """An order's new shipping address."""

    order_id: str
    """Order id."""
    shipping_address: str
    """New address."""


def _address_preview(bo: BackOffice, tenant: str, args: UpdateShippingAddressInput) -> list[RecordChange]:
    return [RecordChange.of("order", _order(bo, tenant, args), shipping_address=args.new_address)]


@tool(
    side_effect=True, operation="change_address", routes=("orders",),
    verify=Verify(read=_order, holds=lambda rec, args, out: rec["shipping_address"] == args.new_address),
    preview=_address_preview,
)
def update_shipping_address(
    bo: BackOffice, tx: Tx, env: ToolEnv, args: UpdateShippingAddressInput
) -> UpdateShippingAddressOutput:
    """Change the address of a ``placed`` or ``paid`` order."""
    order = own_order(bo, tx, env, args.order_id)
    if order["status"] in ("shipped", "delivered"):
        raise ToolError("already_shipped", f"order is {order['status']}")
    if order["status"] not in ("placed", "paid"):
        raise ToolError("invalid_state", f"order is {order['status']}")
    changed = tx.execute(
        "UPDATE orders SET shipping_address = ? WHERE tenant = ? AND id = ? AND status IN ('placed', 'paid')",
        (args.new_address, env.tenant, args.order_id),
    )
    require_one(changed)
    return UpdateShippingAddressOutput(order_id=args.order_id, shipping_address=args.new_address)


# --------------------------------------------------------------------------- reships


class ReshipOrderInput(ToolInput):
    """Send a replacement for a damaged or missing delivered item."""

    order_id: RecordId
    """Order id."""
    reason: str | None = Field(default=None, max_length=500)
    """What was wrong, for the record."""


class ReshipOrderOutput(StrictModel):
    """A replacement shipment that was created."""

    reship_id: str
    """Reship id."""
    order_id: str
    """Original order."""
    status: Literal["created"]
    """State of the replacement shipment."""


def _reships(bo: BackOffice, tenant: str, args: ReshipOrderInput) -> dict[str, Any]:
    return {"reship_ids": [r["id"] for r in bo.list_reships(tenant, args.order_id)]}


def _reship_preview(bo: BackOffice, tenant: str, args: ReshipOrderInput) -> list[RecordChange]:
    order = _order(bo, tenant, args)
    shown = None if order is None else {k: order.get(k) for k in ("id", "status", "delivered_at", "shipping_address")}
    return [RecordChange(kind="order", id=args.order_id, before=shown, after={}),
            RecordChange.new("reship", order_id=args.order_id, reason=args.reason, status="created")]


@tool(
    side_effect=True, operation="reship", routes=("orders",),
    verify=Verify(read=_reships, holds=lambda rec, args, out: out.reship_id in rec["reship_ids"]),
    preview=_reship_preview,
)
def reship_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: ReshipOrderInput) -> ReshipOrderOutput:
    """Create a replacement shipment for a delivered order."""
    order = own_order(bo, tx, env, args.order_id)
    if order["status"] != "delivered":
        raise ToolError("invalid_state", "only delivered orders can be reshipped")
    reship_id = new_id("RS", env)
    tx.execute(
        "INSERT INTO reships (tenant, id, order_id, customer_id, reason, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'created', ?)",
        (env.tenant, reship_id, args.order_id, order["customer_id"], args.reason, iso_z(env.now)),
    )
    return ReshipOrderOutput(reship_id=reship_id, order_id=args.order_id, status="created")
