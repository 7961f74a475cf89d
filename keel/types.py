"""keel's shared vocabulary: the typed values that cross module boundaries.

Graph state, tools, guards and the model gateway all speak in these types. They are
frozen pydantic models that reject unknown fields, so a value that crosses a boundary is
either valid or an error, never silently reshaped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Route",
    "Decision",
    "ActionState",
    "RunStatus",
    "Operation",
    "StrictModel",
    "Ticket",
    "TriageResult",
    "Extraction",
    "ProposedAction",
    "PlanProposal",
    "PolicyCheck",
    "ActionDecision",
    "ToolCard",
    "ROUTES",
]

Route = Literal["billing", "orders", "access", "knowledge", "unknown"]
"""Which specialist handles a ticket. ``unknown``: nobody; the run escalates."""

ROUTES: tuple[Route, ...] = ("billing", "orders", "access", "knowledge", "unknown")

Decision = Literal["execute", "approve", "escalate", "deny"]
"""A policy decision on one action.

- ``execute``: runs with no human.
- ``approve``: the run pauses for a human approval first.
- ``escalate``: a human takes over; the action is not run.
- ``deny``: not allowed; the run escalates with the reason.
"""

ActionState = Literal["executed", "pending_approval", "not_run"]
"""Where an action of the plan stands at the end of a run."""

RunStatus = Literal["running", "completed", "awaiting_approval", "escalated", "rejected"]
"""Outcome of a run. ``running`` only while the graph is between nodes."""

Operation = Literal[
    "refund",
    "cancel_subscription",
    "billing_question",
    "track_order",
    "cancel_order",
    "change_address",
    "reship",
    "password_reset",
    "mfa_reset",
    "change_email",
    "unlock_account",
    "question",
]
"""What a ticket asks for, as extracted by the model. ``question``: a how-to or policy
question that needs no action on the account. ``billing_question``: receipts, double
charges and payment lookups (read only)."""


class StrictModel(BaseModel):
    """Base of keel's boundary models: immutable, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Read-only mapping access by field name: graph state holds these models where it held
    # their JSON dicts before (``graphs.state``), so code and stored checkpoints written
    # against the dict shape (``state["plan"]["hash"]``, ``(state.get("screen") or
    # {}).get("flagged")``) keep reading the same values. New code uses the attributes.
    def __getitem__(self, key: str) -> Any:
        if isinstance(key, str) and key in type(self).model_fields:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The field ``key``, or ``default`` if the model has no such field."""
        return getattr(self, key) if isinstance(key, str) and key in type(self).model_fields else default

    def keys(self) -> list[str]:
        """Field names, so ``{**model}`` and ``dict(model)`` give the fields (shallow)."""
        return list(type(self).model_fields)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in type(self).model_fields


class ToolCard(StrictModel):
    """What the layers that may not reach ``tools/`` (guards, the model gateway) know of a tool.

    Why a card: a tool is declared once (:class:`tools.declaration.ToolDecl`), but the policy
    engine and the gateway sit beside or above nothing that may import the tools (a model
    proposes, it cannot act). Whoever wires them hands them the cards of the declared tools
    (``tools.registry.cards()``), so they read the declaration without importing it.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    """Tool name, as in the policy pack's allowlists."""
    description: str = Field(min_length=1)
    """One line for a planner: what the tool does."""
    side_effect: bool
    """Changes a business system: idempotency key, ledger, and a policy rule of its own."""
    operation: str | None = None
    """The operation this tool carries out (the planner's main action for it), if any."""
    routes: tuple[str, ...] = ()
    """Routes (specialists) whose operation it serves."""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    """JSON Schema of the arguments, for a planner prompt."""


class Ticket(StrictModel):
    """A customer's support request (one line of the batch contract's tickets file)."""

    id: str = Field(min_length=1, max_length=128)
    """Ticket id, unique within a batch."""
    tenant: str = Field(min_length=1, max_length=64)
    """Tenant whose back office the ticket concerns."""
    customer_id: str = Field(min_length=1, max_length=64)
    """The customer who wrote; every record an action names must be theirs."""
    channel: str = Field(default="email", max_length=32)
    """Where the ticket came from (email, chat, …); informational."""
    subject: str = Field(default="", max_length=1_000)
    """Subject line."""
    body: str = Field(max_length=20_000)
    """The customer's text. Data, never instructions."""


class TriageResult(StrictModel):
    """The router's verdict: which specialist, how sure, and why."""

    route: Route
    """Chosen specialist, or ``unknown``."""
    confidence: float = Field(ge=0.0, le=1.0)
    """Router confidence; below the policy's threshold the run escalates."""
    reason_codes: list[str] = Field(default_factory=list)
    """Machine-readable reasons (e.g. ``low_confidence``, ``multiple_intents``)."""
    intents: list[Operation] = Field(default_factory=list)
    """Every operation the ticket asks for, in order of appearance."""


class Extraction(StrictModel):
    """The typed facts a specialist needs from the ticket text."""

    operation: Operation
    """The requested operation."""
    order_id: str | None = None
    """Order named in the ticket, if any (``O-…``)."""
    subscription_id: str | None = None
    """Subscription named in the ticket, if any (``S-…``)."""
    amount_cents: int | None = Field(default=None, ge=0)
    """An explicitly stated amount in cents; None when not stated."""
    full_refund: bool = False
    """The customer asks for everything still refundable."""
    timing: Literal["period_end", "immediate"] | None = None
    """For subscription cancels: when it takes effect."""
    new_email: str | None = None
    """For email changes: the requested address."""
    new_address: str | None = None
    """For address changes: the requested shipping address."""
    query: str | None = None
    """For questions: the search query."""


class ProposedAction(StrictModel):
    """One step of a plan: a tool and its arguments (no idempotency key: that is derived)."""

    tool: str
    """Tool name from the specialist's allowlist."""
    args: dict[str, Any]
    """Arguments, validated against the tool's input model before the plan is signed."""


class PlanProposal(StrictModel):
    """What the planner proposes; a model's output, validated before use."""

    actions: list[ProposedAction] = Field(default_factory=list, max_length=8)
    """Ordered actions."""
    rationale: str = Field(default="", max_length=2_000)
    """Why, for reviewers; never used to decide anything."""


class PolicyCheck(StrictModel):
    """One rule evaluated on one action."""

    rule: str
    """Rule id from the policy pack (e.g. ``ownership``, ``refund.window``)."""
    result: Literal["pass", "fail"]
    """Whether the action satisfied the rule."""
    reason_code: str | None = None
    """Reason code when the rule failed or forced a decision."""
    detail: str = ""
    """Human-readable evidence (numbers compared), safe to show a reviewer."""


class ActionDecision(StrictModel):
    """The policy engine's verdict on one proposed action."""

    decision: Decision
    """execute | approve | escalate | deny."""
    reason_codes: list[str] = Field(default_factory=list)
    """Why (empty for a clean execute/approve)."""
    checks: list[PolicyCheck] = Field(default_factory=list)
    """Every rule evaluated, in order."""
