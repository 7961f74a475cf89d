"""The support tools' contracts: typed inputs and outputs, the call's environment, the errors.

Why typed contracts: a plan's arguments are validated against the input model before the
plan is signed and again before the call, and a tool's output is validated before the
model or a reviewer sees it. Every model rejects unknown fields. What each tool does to
the back office is :mod:`tools.implementations`; the registry (:mod:`tools.registry`)
pairs each contract with its implementation.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field

from keel.db import Tx
from keel.types import StrictModel

__all__ = [
    "ToolError",
    "TransientToolError",
    "ToolEnv",
    "RecordId",
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
