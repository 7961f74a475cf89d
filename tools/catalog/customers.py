"""Customer reads shared by the billing, orders and access specialists."""

from __future__ import annotations

from keel.db import Tx
from keel.types import StrictModel

from ..backoffice import BackOffice
from ..contracts import RecordId, ToolEnv, ToolInput
from ..declaration import tool
from ._common import own_customer

__all__ = ["GetCustomerInput", "AccountState", "CustomerOutput", "get_customer"]


class GetCustomerInput(ToolInput):
    """Look up the ticket's customer."""

    customer_id: RecordId
    """Customer id (``C-…``)."""


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


@tool(side_effect=False, routes=("billing", "orders", "access"), cache_ttl_s=120)
def get_customer(bo: BackOffice, tx: Tx, env: ToolEnv, args: GetCustomerInput) -> CustomerOutput:
    """The ticket's customer record."""
    return CustomerOutput.model_validate(own_customer(bo, tx, env, args.customer_id))
