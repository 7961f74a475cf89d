"""Billing tools: payments, refunds, subscription cancels."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from keel.db import Tx
from keel.types import StrictModel

from ..backoffice import BackOffice, iso_z
from ..contracts import RecordId, ToolEnv, ToolError, ToolInput
from ..declaration import RecordChange, Verify, tool
from ._common import new_id, own_customer, own_order, require_one

__all__ = [
    "ListPaymentsInput", "PaymentOutput", "ListPaymentsOutput", "list_payments",
    "IssueRefundInput", "IssueRefundOutput", "issue_refund",
    "CancelSubscriptionInput", "CancelSubscriptionOutput", "cancel_subscription",
]


class ListPaymentsInput(ToolInput):
    """List a customer's captured payments, optionally for one order (double charges, receipts)."""

    customer_id: RecordId
    """Customer id."""
    order_id: RecordId | None = None
    """Only the payments of this order."""


class PaymentOutput(StrictModel):
    """A captured payment (one per order)."""

    id: str
    """Payment id."""
    order_id: str
    """The order paid for."""
    customer_id: str
    """Payer."""
    amount_cents: int
    """Captured amount."""
    currency: str
    """ISO 4217 code."""
    status: str
    """``captured``, or ``voided`` after the order was cancelled."""
    captured_at: AwareDatetime
    """When captured."""
    refunded_cents: int
    """Refunded so far on the order."""


class ListPaymentsOutput(StrictModel):
    """The customer's payments."""

    payments: list[PaymentOutput]
    """Oldest first."""


@tool(side_effect=False, operation="billing_question", routes=("billing",), cache_ttl_s=120)
def list_payments(bo: BackOffice, tx: Tx, env: ToolEnv, args: ListPaymentsInput) -> ListPaymentsOutput:
    """The customer's payments, optionally for one order."""
    own_customer(bo, tx, env, args.customer_id)
    if args.order_id is not None:
        own_order(bo, tx, env, args.order_id)
    rows = bo.list_payments(env.tenant, args.customer_id, args.order_id, tx)
    return ListPaymentsOutput(payments=[PaymentOutput.model_validate(r) for r in rows])


# --------------------------------------------------------------------------- refunds


class IssueRefundInput(ToolInput):
    """Refund part or all of a delivered order to its original payment method."""

    order_id: RecordId
    """Order id."""
    amount_cents: int = Field(gt=0)
    """Amount in integer cents; never above what is still refundable."""
    reason: str | None = Field(default=None, max_length=500)
    """Why, for the record."""


class IssueRefundOutput(StrictModel):
    """A refund that was issued."""

    refund_id: str
    """Refund id."""
    order_id: str
    """Order refunded."""
    amount_cents: int
    """Amount of this refund."""
    currency: str
    """ISO 4217 code."""
    refunded_cents: int
    """Refunded on the order in total, after this refund."""
    refundable_cents: int
    """Still refundable after this refund."""


def _order(bo: BackOffice, tenant: str, args: Any) -> dict[str, Any] | None:
    return bo.get_order(tenant, args.order_id)


def _refund_preview(bo: BackOffice, tenant: str, args: IssueRefundInput) -> list[RecordChange]:
    order = bo.get_order(tenant, args.order_id)
    refunded = (order or {}).get("refunded_cents", 0) + args.amount_cents
    return [
        RecordChange.of("order", order, refunded_cents=refunded),
        RecordChange.new("refund", order_id=args.order_id, amount_cents=args.amount_cents,
                         currency=(order or {}).get("currency"), reason=args.reason),
    ]


@tool(
    side_effect=True, operation="refund", routes=("billing",),
    verify=Verify(read=_order, holds=lambda rec, args, out: rec["refunded_cents"] >= args.amount_cents),
    preview=_refund_preview,
)
def issue_refund(bo: BackOffice, tx: Tx, env: ToolEnv, args: IssueRefundInput) -> IssueRefundOutput:
    """Insert a refund and add it to the order's refunded total."""
    order = own_order(bo, tx, env, args.order_id)
    if order["status"] != "delivered":
        raise ToolError("not_refundable", "only delivered orders can be refunded")
    refundable = order["total_cents"] - order["refunded_cents"]
    if args.amount_cents > refundable:
        raise ToolError("amount_exceeds_refundable", f"amount exceeds the refundable {refundable} cents")
    changed = tx.execute(
        "UPDATE orders SET refunded_cents = refunded_cents + ?"
        " WHERE tenant = ? AND id = ? AND refunded_cents + ? <= total_cents",
        (args.amount_cents, env.tenant, args.order_id, args.amount_cents),
    )
    require_one(changed)
    refund_id = new_id("RF", env)
    tx.execute(
        "INSERT INTO refunds (tenant, id, order_id, customer_id, amount_cents, currency, reason, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (env.tenant, refund_id, args.order_id, order["customer_id"], args.amount_cents, order["currency"],
         args.reason, iso_z(env.now)),
    )
    refunded = order["refunded_cents"] + args.amount_cents
    return IssueRefundOutput(
        refund_id=refund_id,
        order_id=args.order_id,
        amount_cents=args.amount_cents,
        currency=order["currency"],
        refunded_cents=refunded,
        refundable_cents=order["total_cents"] - refunded,
    )


# --------------------------------------------------------------------------- subscriptions


class CancelSubscriptionInput(ToolInput):
    """Cancel a subscription at the end of its period or right away."""

    subscription_id: RecordId
    """Subscription id (``S-…``)."""
    at: Literal["period_end", "immediate"]
    """When the cancellation takes effect."""


class CancelSubscriptionOutput(StrictModel):
    """A subscription's new state."""

    subscription_id: str
    """Subscription id."""
    status: Literal["cancelled", "cancels_at_period_end"]
    """New status."""
    effective_at: AwareDatetime
    """When the benefits end."""


def _subscription(bo: BackOffice, tenant: str, args: CancelSubscriptionInput) -> dict[str, Any] | None:
    return bo.get_subscription(tenant, args.subscription_id)


def _cancelled_status(args: CancelSubscriptionInput) -> str:
    return "cancelled" if args.at == "immediate" else "cancels_at_period_end"


def _cancel_subscription_preview(bo: BackOffice, tenant: str, args: CancelSubscriptionInput) -> list[RecordChange]:
    return [RecordChange.of("subscription", _subscription(bo, tenant, args), status=_cancelled_status(args))]


@tool(
    side_effect=True, operation="cancel_subscription", routes=("billing",),
    verify=Verify(read=_subscription, holds=lambda rec, args, out: rec["status"] == _cancelled_status(args)),
    preview=_cancel_subscription_preview,
)
def cancel_subscription(
    bo: BackOffice, tx: Tx, env: ToolEnv, args: CancelSubscriptionInput
) -> CancelSubscriptionOutput:
    """Mark a subscription ``cancels_at_period_end`` or ``cancelled``."""
    sub = bo.get_subscription(env.tenant, args.subscription_id, tx)
    if sub is None:
        raise ToolError("not_found", "subscription not found")
    if sub["customer_id"] != env.customer_id:
        raise ToolError("not_owner", "subscription does not belong to the ticket's customer")
    allowed = {"active"} if args.at == "period_end" else {"active", "cancels_at_period_end"}
    if sub["status"] not in allowed:
        raise ToolError("not_cancellable", f"subscription is {sub['status']}")
    status = "cancels_at_period_end" if args.at == "period_end" else "cancelled"
    effective = sub["period_end"] if args.at == "period_end" else iso_z(env.now)
    changed = tx.execute(
        "UPDATE subscriptions SET status = ?, cancelled_at = ? WHERE tenant = ? AND id = ? AND status = ?",
        (status, iso_z(env.now), env.tenant, args.subscription_id, sub["status"]),
    )
    require_one(changed)
    return CancelSubscriptionOutput(subscription_id=args.subscription_id, status=status, effective_at=effective)
