"""The gateway's vocabulary: tasks, usage records, errors, the provider protocol and the
planning input.

Graph nodes never talk to a model directly; they go through :class:`ModelGateway`, which
speaks these types. Keeping them here (not in ``gateway.py``) lets providers import them
without importing the gateway, and lets tests build records by hand.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from keel.types import Extraction, Operation, Route, StrictModel, Ticket

__all__ = [
    "Task",
    "TASKS",
    "ROUTE_OPERATIONS",
    "OPERATION_ROUTE",
    "OPERATION_TOOL",
    "Usage",
    "GatewayCall",
    "ModelError",
    "InvalidOutput",
    "ModelProvider",
    "PlanningInput",
]

Task = Literal["triage", "extract", "plan"]
"""The three things a model is asked to do. Each has one output schema."""

TASKS: tuple[Task, ...] = ("triage", "extract", "plan")

ROUTE_OPERATIONS: dict[Route, tuple[Operation, ...]] = {
    "billing": ("refund", "cancel_subscription", "billing_question"),
    "orders": ("track_order", "cancel_order", "change_address", "reship"),
    "access": ("password_reset", "mfa_reset", "change_email", "unlock_account"),
    "knowledge": ("question",),
    "unknown": (),
}
"""Which operations each specialist handles (support-v1's route table)."""

OPERATION_ROUTE: dict[Operation, Route] = {
    op: route for route, ops in ROUTE_OPERATIONS.items() for op in ops
}
"""The route an operation belongs to; asking for ops of two routes is ``multiple_intents``."""

OPERATION_TOOL: dict[Operation, str] = {
    "refund": "issue_refund",
    "cancel_subscription": "cancel_subscription",
    "billing_question": "list_payments",
    "track_order": "track_shipment",
    "cancel_order": "cancel_order",
    "change_address": "update_shipping_address",
    "reship": "reship_order",
    "password_reset": "send_password_reset",
    "mfa_reset": "reset_mfa",
    "change_email": "change_email",
    "unlock_account": "unlock_account",
    "question": "search_kb",
}
"""The tool that carries out each operation (the planner's main action)."""


class Usage(StrictModel):
    """Tokens one model call consumed, as reported by the provider (or estimated locally)."""

    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)


class GatewayCall(StrictModel):
    """One attempt of one provider at one task: what the lead audits, traces and charges.

    A task that falls back produces several records (the failed attempts first). Failed
    attempts are recorded too because their tokens were spent all the same.
    """

    task: Task
    provider: str
    ok: bool
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    ms: float = Field(ge=0.0)
    error: str | None = None
    """Safe error class (``invalid_output``, ``provider_error:TimeoutError``…); never the
    raw output or an exception message, which could echo ticket text or secrets."""

    @property
    def tokens(self) -> int:
        """Total tokens charged to the tenant for this attempt."""
        return self.tokens_in + self.tokens_out


class ModelError(RuntimeError):
    """No provider produced a valid output for a task.

    The message is safe to show and to store in a run's record: it names the task and the
    providers tried, never model output or ticket text.
    """

    def __init__(self, task: Task, calls: list[GatewayCall]) -> None:
        self.task: Task = task
        self.calls: list[GatewayCall] = list(calls)
        tried = ", ".join(f"{c.provider} ({c.error})" for c in calls) or "none configured"
        super().__init__(f"no valid model output for task '{task}'; providers tried: {tried}")


class InvalidOutput(ValueError):
    """Raised by the gateway's semantic checks: the output parsed but cannot be trusted
    (a tool outside the allowlist, an id that appears nowhere in the ticket or context)."""


@runtime_checkable
class ModelProvider(Protocol):
    """A source of structured model output.

    ``complete`` returns the raw output (a dict or an instance of ``schema``) and the
    tokens used. Providers do not need to validate: the gateway validates everything it
    receives, so a provider cannot make the gateway trust bad output.
    """

    name: str

    def complete(
        self, task: str, schema: type[BaseModel], system: str, payload: dict[str, Any]
    ) -> tuple[dict[str, Any] | BaseModel, Usage]:
        """Answer ``task`` for ``payload`` in the shape of ``schema``."""
        ...


class PlanningInput(StrictModel):
    """Everything the planner sees for one ticket.

    The records are fixture-shaped dicts (see batch-contract.md): only the ticket's
    customer's own, plus any order the ticket names even if another customer owns it
    (``named_orders``), so ownership is judged by the guards rather than guessed here.
    """

    ticket: Ticket
    route: Route
    extraction: Extraction
    allowlist: list[str]
    """Tool names the route's specialist may use; a plan outside it is rejected."""
    customer: dict[str, Any] | None = None
    orders: list[dict[str, Any]] = Field(default_factory=list)
    subscriptions: list[dict[str, Any]] = Field(default_factory=list)
    named_orders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Orders named in the ticket text, keyed by id, whoever owns them."""
