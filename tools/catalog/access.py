"""Account-access tools: login state, password resets, MFA resets, email changes, unlocks."""

from __future__ import annotations

from typing import Any

from keel.db import Tx
from keel.types import StrictModel

from ..backoffice import BackOffice, iso_z
from ..contracts import EmailAddress, RecordId, ToolEnv, ToolInput
from ..declaration import RecordChange, Verify, tool
from ._common import mask_email, new_id, own_customer

__all__ = [
    "GetAccountInput", "AccountOutput", "get_account",
    "SendPasswordResetInput", "SendPasswordResetOutput", "send_password_reset",
    "ResetMfaInput", "ResetMfaOutput", "reset_mfa",
    "ChangeEmailInput", "ChangeEmailOutput", "change_email",
    "UnlockAccountInput", "UnlockAccountOutput", "unlock_account",
]


class GetAccountInput(ToolInput):
    """Login state of the customer's account."""

    customer_id: RecordId
    """Customer id."""


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


@tool(side_effect=False, routes=("access",), cache_ttl_s=120)
def get_account(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetAccountInput) -> AccountOutput:
    """The customer's login state."""
    own_customer(bo, tx, env, args.customer_id)
    return AccountOutput.model_validate(bo.get_account(env.tenant, args.customer_id, tx))


def _customer(bo: BackOffice, tenant: str, args: Any) -> dict[str, Any] | None:
    return bo.get_customer(tenant, args.customer_id)


def _account_change(**after: Any) -> Any:
    """A preview: the account's fields ``after`` set (the account record is keyed by customer)."""

    def preview(bo: BackOffice, tenant: str, args: Any) -> list[RecordChange]:
        account = bo.get_account(tenant, args.customer_id)
        before = None if account is None else {k: account.get(k) for k in after}
        return [RecordChange(kind="account", id=args.customer_id, before=before, after=dict(after))]

    return preview


# --------------------------------------------------------------------------- password resets


class SendPasswordResetInput(ToolInput):
    """Email a password-reset link to the address on file (never anywhere else)."""

    customer_id: RecordId
    """Customer id."""


class SendPasswordResetOutput(StrictModel):
    """A reset link that was sent."""

    reset_id: str
    """Reset id."""
    customer_id: str
    """Customer id."""
    sent_to: str
    """The address on file, masked (``a***@example.com``)."""


def _resets(bo: BackOffice, tenant: str, args: SendPasswordResetInput) -> dict[str, Any]:
    return {"reset_ids": [r["id"] for r in bo.list_password_resets(tenant, args.customer_id)]}


def _reset_preview(bo: BackOffice, tenant: str, args: SendPasswordResetInput) -> list[RecordChange]:
    customer = bo.get_customer(tenant, args.customer_id)
    sent_to = mask_email(customer["email"]) if customer else None
    return [RecordChange.new("password_reset", customer_id=args.customer_id, sent_to=sent_to)]


@tool(
    side_effect=True, operation="password_reset", routes=("access",),
    verify=Verify(read=_resets, holds=lambda rec, args, out: out.reset_id in rec["reset_ids"]),
    preview=_reset_preview,
)
def send_password_reset(
    bo: BackOffice, tx: Tx, env: ToolEnv, args: SendPasswordResetInput
) -> SendPasswordResetOutput:
    """Record a reset link sent to the email on file."""
    customer = own_customer(bo, tx, env, args.customer_id)
    reset_id = new_id("PR", env)
    tx.execute(
        "INSERT INTO password_resets (tenant, id, customer_id, email, created_at) VALUES (?, ?, ?, ?, ?)",
        (env.tenant, reset_id, customer["id"], customer["email"], iso_z(env.now)),
    )
    return SendPasswordResetOutput(reset_id=reset_id, customer_id=customer["id"], sent_to=mask_email(customer["email"]))


# --------------------------------------------------------------------------- MFA, email, lock


class ResetMfaInput(ToolInput):
    """Turn off multi-factor authentication so the customer can enrol a new device."""

    customer_id: RecordId
    """Customer id."""


class ResetMfaOutput(StrictModel):
    """An account whose MFA was reset."""

    customer_id: str
    """Customer id."""
    mfa_enabled: bool
    """False after a reset."""


@tool(
    side_effect=True, operation="mfa_reset", routes=("access",),
    verify=Verify(read=_customer, holds=lambda rec, args, out: not rec["account"]["mfa_enabled"]),
    preview=_account_change(mfa_enabled=False),
)
def reset_mfa(bo: BackOffice, tx: Tx, env: ToolEnv, args: ResetMfaInput) -> ResetMfaOutput:
    """Turn MFA off on the account."""
    own_customer(bo, tx, env, args.customer_id)
    tx.execute("UPDATE customers SET mfa_enabled = 0 WHERE tenant = ? AND id = ?", (env.tenant, args.customer_id))
    return ResetMfaOutput(customer_id=args.customer_id, mfa_enabled=False)


class ChangeEmailInput(ToolInput):
    """Change the email address on file."""

    customer_id: RecordId
    """Customer id."""
    new_email: EmailAddress
    """The new address."""


class ChangeEmailOutput(StrictModel):
    """An account's new email address."""

    customer_id: str
    """Customer id."""
    email: str
    """New address on file."""


def _email_preview(bo: BackOffice, tenant: str, args: ChangeEmailInput) -> list[RecordChange]:
    return _account_change(email=args.new_email)(bo, tenant, args)


@tool(
    side_effect=True, operation="change_email", routes=("access",),
    verify=Verify(read=_customer, holds=lambda rec, args, out: rec["email"] == args.new_email),
    preview=_email_preview,
)
def change_email(bo: BackOffice, tx: Tx, env: ToolEnv, args: ChangeEmailInput) -> ChangeEmailOutput:
    """Replace the email on file."""
    own_customer(bo, tx, env, args.customer_id)
    tx.execute(
        "UPDATE customers SET email = ? WHERE tenant = ? AND id = ?", (args.new_email, env.tenant, args.customer_id)
    )
    return ChangeEmailOutput(customer_id=args.customer_id, email=args.new_email)


class UnlockAccountInput(ToolInput):
    """Unlock an account locked after too many sign-in attempts."""

    customer_id: RecordId
    """Customer id."""


class UnlockAccountOutput(StrictModel):
    """An account that was unlocked."""

    customer_id: str
    """Customer id."""
    locked: bool
    """False after an unlock."""


@tool(
    side_effect=True, operation="unlock_account", routes=("access",),
    verify=Verify(read=_customer, holds=lambda rec, args, out: not rec["account"]["locked"]),
    preview=_account_change(locked=False),
)
def unlock_account(bo: BackOffice, tx: Tx, env: ToolEnv, args: UnlockAccountInput) -> UnlockAccountOutput:
    """Clear the account's lock."""
    own_customer(bo, tx, env, args.customer_id)
    tx.execute("UPDATE customers SET locked = 0 WHERE tenant = ? AND id = ?", (env.tenant, args.customer_id))
    return UnlockAccountOutput(customer_id=args.customer_id, locked=False)
