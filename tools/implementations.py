"""What each support tool does to the back office (the contracts are :mod:`tools.contracts`).

The business policy (refund windows, approval thresholds, identity levels) lives in
``guards/``. The tools only enforce invariants that must hold whatever the policy says,
as a last line of defense: records of another tenant do not exist, records of another
customer are refused (``not_owner``), a refund never exceeds what is refundable, only
``placed``/``paid`` orders can be cancelled or re-addressed. Side-effecting tools check
before they write, so a :class:`~tools.contracts.ToolError` never leaves a partial change
behind. Each function is ``fn(backoffice, tx, env, args) -> output``, in one transaction.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from keel.db import Tx

from .backoffice import BackOffice, iso_z
from .contracts import (
    AccountOutput,
    CancelOrderInput,
    CancelOrderOutput,
    CancelSubscriptionInput,
    CancelSubscriptionOutput,
    ChangeEmailInput,
    ChangeEmailOutput,
    CustomerOutput,
    GetAccountInput,
    GetCustomerInput,
    GetOrderInput,
    IssueRefundInput,
    IssueRefundOutput,
    KbResult,
    ListPaymentsInput,
    ListPaymentsOutput,
    OrderOutput,
    PaymentOutput,
    ReshipOrderInput,
    ReshipOrderOutput,
    ResetMfaInput,
    ResetMfaOutput,
    SearchKbInput,
    SearchKbOutput,
    SendPasswordResetInput,
    SendPasswordResetOutput,
    ToolEnv,
    ToolError,
    TrackShipmentInput,
    TrackShipmentOutput,
    TransientToolError,
    UnlockAccountInput,
    UnlockAccountOutput,
    UpdateShippingAddressInput,
    UpdateShippingAddressOutput,
)
from .search import KnowledgeIndex

__all__ = [
    "derived_id",
    "get_customer",
    "get_order",
    "list_payments",
    "track_shipment",
    "get_account",
    "search_kb",
    "issue_refund",
    "cancel_subscription",
    "cancel_order",
    "update_shipping_address",
    "reship_order",
    "send_password_reset",
    "reset_mfa",
    "change_email",
    "unlock_account",
]


def derived_id(prefix: str, tenant: str, idempotency_key: str) -> str:
    """The id of the record a keyed call creates: the same on every replay of the key, so
    a run can also recognise its own records (``tools.refund_history``)."""
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()
    return f"{prefix}-{digest[:16]}"


def _new_id(prefix: str, env: ToolEnv) -> str:
    """A record id: derived from the idempotency key (stable on replay), else random."""
    if env.idempotency_key:
        return derived_id(prefix, env.tenant, env.idempotency_key)
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def _own_customer(bo: BackOffice, tx: Tx, env: ToolEnv, customer_id: str) -> dict[str, Any]:
    customer = bo.get_customer(env.tenant, customer_id, tx)
    if customer is None:
        raise ToolError("not_found", "customer not found")
    if customer["id"] != env.customer_id:
        raise ToolError("not_owner", "customer is not the ticket's customer")
    return customer


def _own_order(bo: BackOffice, tx: Tx, env: ToolEnv, order_id: str) -> dict[str, Any]:
    order = bo.get_order(env.tenant, order_id, tx)
    if order is None:
        raise ToolError("not_found", "order not found")
    if order["customer_id"] != env.customer_id:
        raise ToolError("not_owner", "order does not belong to the ticket's customer")
    return order


def _require_one(changed: int) -> None:
    if changed != 1:  # a concurrent call changed the record between our read and write
        raise TransientToolError("record changed concurrently")


# --------------------------------------------------------------------------- reads


def get_customer(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetCustomerInput) -> CustomerOutput:
    """The ticket's customer record."""
    return CustomerOutput.model_validate(_own_customer(bo, tx, env, args.customer_id))


def get_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetOrderInput) -> OrderOutput:
    """One of the customer's orders."""
    return OrderOutput.model_validate(_own_order(bo, tx, env, args.order_id))


def list_payments(bo: BackOffice, tx: Tx, env: ToolEnv, args: ListPaymentsInput) -> ListPaymentsOutput:
    """The customer's payments, optionally for one order."""
    _own_customer(bo, tx, env, args.customer_id)
    if args.order_id is not None:
        _own_order(bo, tx, env, args.order_id)
    rows = bo.list_payments(env.tenant, args.customer_id, args.order_id, tx)
    return ListPaymentsOutput(payments=[PaymentOutput.model_validate(r) for r in rows])


def track_shipment(bo: BackOffice, tx: Tx, env: ToolEnv, args: TrackShipmentInput) -> TrackShipmentOutput:
    """An order's status and the carrier's latest status text."""
    order = _own_order(bo, tx, env, args.order_id)
    return TrackShipmentOutput(order_id=order["id"], status=order["status"], carrier_status=order["carrier_status"])


def get_account(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetAccountInput) -> AccountOutput:
    """The customer's login state."""
    _own_customer(bo, tx, env, args.customer_id)
    return AccountOutput.model_validate(bo.get_account(env.tenant, args.customer_id, tx))


def search_kb(bo: BackOffice, tx: Tx, env: ToolEnv, args: SearchKbInput) -> SearchKbOutput:
    """Relevant knowledge-base articles; none when no article answers the question."""
    hits = KnowledgeIndex(bo.articles(env.tenant, tx)).search(args.query, limit=args.limit)
    return SearchKbOutput(results=[KbResult(id=h.id, title=h.title, score=h.score, snippet=h.snippet) for h in hits])


# --------------------------------------------------------------------------- side effects


def issue_refund(bo: BackOffice, tx: Tx, env: ToolEnv, args: IssueRefundInput) -> IssueRefundOutput:
    """Insert a refund and add it to the order's refunded total."""
    order = _own_order(bo, tx, env, args.order_id)
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
    _require_one(changed)
    refund_id = _new_id("RF", env)
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
    _require_one(changed)
    return CancelSubscriptionOutput(subscription_id=args.subscription_id, status=status, effective_at=effective)


def cancel_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: CancelOrderInput) -> CancelOrderOutput:
    """Cancel a ``placed`` or ``paid`` order and void its payment."""
    order = _own_order(bo, tx, env, args.order_id)
    if order["status"] not in ("placed", "paid"):
        raise ToolError("not_cancellable", f"order is {order['status']}")
    changed = tx.execute(
        "UPDATE orders SET status = 'cancelled' WHERE tenant = ? AND id = ? AND status IN ('placed', 'paid')",
        (env.tenant, args.order_id),
    )
    _require_one(changed)
    tx.execute("UPDATE payments SET status = 'voided' WHERE tenant = ? AND order_id = ?", (env.tenant, args.order_id))
    return CancelOrderOutput(order_id=args.order_id, status="cancelled")


def update_shipping_address(
    bo: BackOffice, tx: Tx, env: ToolEnv, args: UpdateShippingAddressInput
) -> UpdateShippingAddressOutput:
    """Change the address of a ``placed`` or ``paid`` order."""
    order = _own_order(bo, tx, env, args.order_id)
    if order["status"] in ("shipped", "delivered"):
        raise ToolError("already_shipped", f"order is {order['status']}")
    if order["status"] not in ("placed", "paid"):
        raise ToolError("invalid_state", f"order is {order['status']}")
    changed = tx.execute(
        "UPDATE orders SET shipping_address = ? WHERE tenant = ? AND id = ? AND status IN ('placed', 'paid')",
        (args.new_address, env.tenant, args.order_id),
    )
    _require_one(changed)
    return UpdateShippingAddressOutput(order_id=args.order_id, shipping_address=args.new_address)


def reship_order(bo: BackOffice, tx: Tx, env: ToolEnv, args: ReshipOrderInput) -> ReshipOrderOutput:
    """Create a replacement shipment for a delivered order."""
    order = _own_order(bo, tx, env, args.order_id)
    if order["status"] != "delivered":
        raise ToolError("invalid_state", "only delivered orders can be reshipped")
    reship_id = _new_id("RS", env)
    tx.execute(
        "INSERT INTO reships (tenant, id, order_id, customer_id, reason, status, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'created', ?)",
        (env.tenant, reship_id, args.order_id, order["customer_id"], args.reason, iso_z(env.now)),
    )
    return ReshipOrderOutput(reship_id=reship_id, order_id=args.order_id, status="created")


def send_password_reset(
    bo: BackOffice, tx: Tx, env: ToolEnv, args: SendPasswordResetInput
) -> SendPasswordResetOutput:
    """Record a reset link sent to the email on file."""
    customer = _own_customer(bo, tx, env, args.customer_id)
    reset_id = _new_id("PR", env)
    tx.execute(
        "INSERT INTO password_resets (tenant, id, customer_id, email, created_at) VALUES (?, ?, ?, ?, ?)",
        (env.tenant, reset_id, customer["id"], customer["email"], iso_z(env.now)),
    )
    return SendPasswordResetOutput(reset_id=reset_id, customer_id=customer["id"], sent_to=_mask_email(customer["email"]))


def reset_mfa(bo: BackOffice, tx: Tx, env: ToolEnv, args: ResetMfaInput) -> ResetMfaOutput:
    """Turn MFA off on the account."""
    _own_customer(bo, tx, env, args.customer_id)
    tx.execute("UPDATE customers SET mfa_enabled = 0 WHERE tenant = ? AND id = ?", (env.tenant, args.customer_id))
    return ResetMfaOutput(customer_id=args.customer_id, mfa_enabled=False)


def change_email(bo: BackOffice, tx: Tx, env: ToolEnv, args: ChangeEmailInput) -> ChangeEmailOutput:
    """Replace the email on file."""
    _own_customer(bo, tx, env, args.customer_id)
    tx.execute(
        "UPDATE customers SET email = ? WHERE tenant = ? AND id = ?", (args.new_email, env.tenant, args.customer_id)
    )
    return ChangeEmailOutput(customer_id=args.customer_id, email=args.new_email)


def unlock_account(bo: BackOffice, tx: Tx, env: ToolEnv, args: UnlockAccountInput) -> UnlockAccountOutput:
    """Clear the account's lock."""
    _own_customer(bo, tx, env, args.customer_id)
    tx.execute("UPDATE customers SET locked = 0 WHERE tenant = ? AND id = ?", (env.tenant, args.customer_id))
    return UnlockAccountOutput(customer_id=args.customer_id, locked=False)
