"""The tool registry: every tool the policy's allowlists may name, with its contract.

Why a registry: the planner's prompt, plan validation, the guards and the runner all need
the same facts about a tool (its input and output models, whether it has a side effect),
so they read them from one table instead of repeating them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from keel.types import READ_TOOLS, SIDE_EFFECT_TOOLS

from . import contracts as c
from . import implementations as impl

__all__ = ["ToolFn", "ToolSpec", "TOOLS", "tool_schemas"]

ToolFn = Callable[..., BaseModel]
"""``fn(backoffice, tx, env, args) -> output``: one transaction, may raise ToolError."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool's contract and implementation."""

    name: str
    """Tool name, as in the policy's allowlists."""
    input_model: type[BaseModel]
    """Validates the arguments (unknown fields rejected)."""
    output_model: type[BaseModel]
    """Validates the result before anyone sees it."""
    side_effect: bool
    """Changes a business system: needs an idempotency key and is recorded in the ledger."""
    fn: ToolFn
    """The implementation."""

    @property
    def description(self) -> str:
        """One line for a planner prompt: what the tool does."""
        return (self.input_model.__doc__ or "").strip().splitlines()[0]


def _spec(name: str, fn: ToolFn, input_model: type[BaseModel], output_model: type[BaseModel]) -> ToolSpec:
    return ToolSpec(name, input_model, output_model, name in SIDE_EFFECT_TOOLS, fn)


TOOLS: dict[str, ToolSpec] = {
    s.name: s
    for s in (
        _spec("get_customer", impl.get_customer, c.GetCustomerInput, c.CustomerOutput),
        _spec("get_order", impl.get_order, c.GetOrderInput, c.OrderOutput),
        _spec("list_payments", impl.list_payments, c.ListPaymentsInput, c.ListPaymentsOutput),
        _spec("track_shipment", impl.track_shipment, c.TrackShipmentInput, c.TrackShipmentOutput),
        _spec("get_account", impl.get_account, c.GetAccountInput, c.AccountOutput),
        _spec("search_kb", impl.search_kb, c.SearchKbInput, c.SearchKbOutput),
        _spec("issue_refund", impl.issue_refund, c.IssueRefundInput, c.IssueRefundOutput),
        _spec("cancel_subscription", impl.cancel_subscription, c.CancelSubscriptionInput, c.CancelSubscriptionOutput),
        _spec("cancel_order", impl.cancel_order, c.CancelOrderInput, c.CancelOrderOutput),
        _spec(
            "update_shipping_address",
            impl.update_shipping_address,
            c.UpdateShippingAddressInput,
            c.UpdateShippingAddressOutput,
        ),
        _spec("reship_order", impl.reship_order, c.ReshipOrderInput, c.ReshipOrderOutput),
        _spec("send_password_reset", impl.send_password_reset, c.SendPasswordResetInput, c.SendPasswordResetOutput),
        _spec("reset_mfa", impl.reset_mfa, c.ResetMfaInput, c.ResetMfaOutput),
        _spec("change_email", impl.change_email, c.ChangeEmailInput, c.ChangeEmailOutput),
        _spec("unlock_account", impl.unlock_account, c.UnlockAccountInput, c.UnlockAccountOutput),
    )
}
"""Every tool by name."""

if set(TOOLS) != READ_TOOLS | SIDE_EFFECT_TOOLS:  # pragma: no cover - a wiring mistake
    raise RuntimeError("tools.registry is out of sync with keel.types tool sets")


def tool_schemas(names: frozenset[str] | set[str] | None = None) -> dict[str, dict[str, Any]]:
    """JSON Schemas of the tools' inputs (all, or ``names``), e.g. for a planner prompt."""
    return {n: s.input_model.model_json_schema() for n, s in TOOLS.items() if names is None or n in names}
