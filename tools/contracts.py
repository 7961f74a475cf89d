"""The support tools: typed inputs and outputs, and what each tool does to the back office.

Why typed contracts: a plan's arguments are validated against the input model before the
plan is signed and again before the call, and a tool's output is validated before the
model or a reviewer sees it. Every model rejects unknown fields.

The business policy (refund windows, approval thresholds, identity levels) lives in
``guards/``. The tools only enforce invariants that must hold whatever the policy says,
as a last line of defense: records of another tenant do not exist, records of another
customer are refused (``not_owner``), a refund never exceeds what is refundable, only
``placed``/``paid`` orders can be cancelled or re-addressed. Side-effecting tools check
before they write, so a :class:`ToolError` never leaves a partial change behind.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field

from keel.db import Tx
from keel.types import StrictModel

from .backoffice import BackOffice, iso_z
from .search import KnowledgeIndex

__all__ = [
    "ToolError",
    "TransientToolError",
    "ToolEnv",
    "derived_id",
    "EmailAddress",
    # inputs
    "GetCustomerInput",
    "GetOrderInput",
    "ListPaymentsInput",
    "TrackShipmentInput",
    "GetAccountInput",
    "SearchKbInput",
    "IssueRefundInput",
    "CancelSubscriptionInput",
    "CancelOrderInput",
    "UpdateShippingAddressInput",
    "ReshipOrderInput",
    "SendPasswordResetInput",
    "ResetMfaInput",
    "ChangeEmailInput",
    "UnlockAccountInput",
    # outputs
    "AccountState",
    "CustomerOutput",
    "OrderOutput",
    "PaymentOutput",
    "ListPaymentsOutput",
    "TrackShipmentOutput",
    "AccountOutput",
    "KbResult",
    "SearchKbOutput",
    "IssueRefundOutput",
    "CancelSubscriptionOutput",
    "CancelOrderOutput",
    "UpdateShippingAddressOutput",
    "ReshipOrderOutput",
    "SendPasswordResetOutput",
    "ResetMfaOutput",
    "ChangeEmailOutput",
    "UnlockAccountOutput",
    # tool functions
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


class ToolError(Exception):
    """A tool refused the call; ``code`` is machine-readable, ``message`` short and safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientToolError(Exception):
    """A failure worth retrying (a busy database, a flaky downstream); the runner backs off."""


@dataclass(frozen=True)
class ToolEnv:
    """What a tool knows about its call besides its arguments (built by the runner)."""

    tenant: str
    """Tenant whose records the call may see."""
    customer_id: str
    """The ticket's customer: the only owner whose records the call may touch."""
    now: datetime
    """The run's clock, stamped on the records a tool writes."""
    idempotency_key: str | None = None
    """The call's idempotency key; new record ids are derived from it."""
    guard: Callable[[Tx], None] | None = None
    """The caller's last check, which the runner makes in the call's transaction before
    the tool acts (:attr:`tools.runner.ToolContext.guard`)."""


# --------------------------------------------------------------------------- types

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


def _valid_email(value: str) -> str:
    # pydantic's EmailStr needs the email-validator package, which keel does not ship.
    if len(value) > 254 or parseaddr(value)[1] != value or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


EmailAddress = Annotated[str, AfterValidator(_valid_email)]
"""A bare ``local@domain.tld`` address (no display name)."""

RecordId = Annotated[str, Field(min_length=1, max_length=64)]
"""Id of a back-office record."""


class _Input(StrictModel):
    """Tool inputs: strict JSON types (no ``"12"`` for 12), unknown fields rejected."""

    model_config = ConfigDict(strict=True)


class GetCustomerInput(_Input):
    """Look up the ticket's customer."""

    customer_id: RecordId
    """Customer id (``C-…``)."""


class GetOrderInput(_Input):
    """Look up one order."""

    order_id: RecordId
    """Order id (``O-…``)."""


class ListPaymentsInput(_Input):
    """List a customer's captured payments, optionally for one order (double charges, receipts)."""

    customer_id: RecordId
    """Customer id."""
    order_id: RecordId | None = None
    """Only the payments of this order."""


class TrackShipmentInput(_Input):
    """Where an order is, as the carrier reports it."""

    order_id: RecordId
    """Order id."""


class GetAccountInput(_Input):
    """Login state of the customer's account."""

    customer_id: RecordId
    """Customer id."""


class SearchKbInput(_Input):
    """Search the tenant's knowledge base."""

    query: str = Field(min_length=1, max_length=2_000)
    """The question, in the customer's words."""
    limit: int = Field(default=3, ge=1, le=10)
    """Most results to return."""


class IssueRefundInput(_Input):
    """Refund part or all of a delivered order to its original payment method."""

    order_id: RecordId
    """Order id."""
    amount_cents: int = Field(gt=0)
    """Amount in integer cents; never above what is still refundable."""
    reason: str | None = Field(default=None, max_length=500)
    """Why, for the record."""


class CancelSubscriptionInput(_Input):
    """Cancel a subscription at the end of its period or right away."""

    subscription_id: RecordId
    """Subscription id (``S-…``)."""
    at: Literal["period_end", "immediate"]
    """When the cancellation takes effect."""


class CancelOrderInput(_Input):
    """Cancel an order that has not shipped."""

    order_id: RecordId
    """Order id."""


class UpdateShippingAddressInput(_Input):
    """Ship an order that has not shipped to another address."""

    order_id: RecordId
    """Order id."""
    new_address: str = Field(min_length=5, max_length=500)
    """The full new address."""


class ReshipOrderInput(_Input):
    """Send a replacement for a damaged or missing delivered item."""

    order_id: RecordId
    """Order id."""
    reason: str | None = Field(default=None, max_length=500)
    """What was wrong, for the record."""


class SendPasswordResetInput(_Input):
    """Email a password-reset link to the address on file (never anywhere else)."""

    customer_id: RecordId
    """Customer id."""


class ResetMfaInput(_Input):
    """Turn off multi-factor authentication so the customer can enrol a new device."""

    customer_id: RecordId
    """Customer id."""


class ChangeEmailInput(_Input):
    """Change the email address on file."""

    customer_id: RecordId
    """Customer id."""
    new_email: EmailAddress
    """The new address."""


class UnlockAccountInput(_Input):
    """Unlock an account locked after too many sign-in attempts."""

    customer_id: RecordId
    """Customer id."""


class AccountState(StrictModel):
    """Login state inside a customer record."""

    locked: bool
    """Locked after too many attempts."""
    mfa_enabled: bool
    """Multi-factor authentication on."""


class CustomerOutput(StrictModel):
    """A customer, shaped like the fixture record."""

    id: str
    """Customer id."""
    name: str
    """Display name."""
    email: str
    """Email on file."""
    identity_level: int
    """How well the identity is verified (the policy's thresholds use it)."""
    account: AccountState
    """Login state."""


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


class TrackShipmentOutput(StrictModel):
    """An order's shipping status, quoted in tracking answers."""

    order_id: str
    """Order id."""
    status: str
    """Fulfilment status."""
    carrier_status: str
    """Carrier's latest status text."""


class AccountOutput(StrictModel):
    """Login state of an account, what the access tools change and VERIFY re-reads."""

    customer_id: str
    """Customer id."""
    email: str
    """Email on file."""
    identity_level: int
    """Identity verification level."""
    locked: bool
    """Locked after too many attempts."""
    mfa_enabled: bool
    """Multi-factor authentication on."""


class KbResult(StrictModel):
    """One relevant article."""

    id: str
    """Article id, cited by the answer."""
    title: str
    """Article title."""
    score: float
    """Relevance score (orders results within one query)."""
    snippet: str
    """The best-matching sentence."""


class SearchKbOutput(StrictModel):
    """Relevant articles, best first; empty means no article answers the question."""

    results: list[KbResult]
    """At most ``limit`` articles."""


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


class CancelSubscriptionOutput(StrictModel):
    """A subscription's new state."""

    subscription_id: str
    """Subscription id."""
    status: Literal["cancelled", "cancels_at_period_end"]
    """New status."""
    effective_at: AwareDatetime
    """When the benefits end."""


class CancelOrderOutput(StrictModel):
    """An order that was cancelled."""

    order_id: str
    """Order id."""
    status: Literal["cancelled"]
    """New status."""


class UpdateShippingAddressOutput(StrictModel):
    """An order's new shipping address."""

    order_id: str
    """Order id."""
    shipping_address: str
    """New address."""


class ReshipOrderOutput(StrictModel):
    """A replacement shipment that was created."""

    reship_id: str
    """Reship id."""
    order_id: str
    """Original order."""
    status: Literal["created"]
    """State of the replacement shipment."""


class SendPasswordResetOutput(StrictModel):
    """A reset link that was sent."""

    reset_id: str
    """Reset id."""
    customer_id: str
    """Customer id."""
    sent_to: str
    """The address on file, masked (``a***@example.com``)."""


class ResetMfaOutput(StrictModel):
    """An account whose MFA was reset."""

    customer_id: str
    """Customer id."""
    mfa_enabled: bool
    """False after a reset."""


class ChangeEmailOutput(StrictModel):
    """An account's new email address."""

    customer_id: str
    """Customer id."""
    email: str
    """New address on file."""


class UnlockAccountOutput(StrictModel):
    """An account that was unlocked."""

    customer_id: str
    """Customer id."""
    locked: bool
    """False after an unlock."""


# --------------------------------------------------------------------------- helpers


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
