"""The gateway's vocabulary: tasks, usage records, errors, the provider protocol and the
planning input.

Graph nodes never talk to a model directly; they go through :class:`ModelGateway`, which
speaks these types. Keeping them here (not in ``gateway.py``) lets providers import them
without importing the gateway, and lets tests build records by hand.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, model_validator

from keel.errors import KeelError
from keel.types import Extraction, Operation, Route, StrictModel, Ticket, ToolCard

__all__ = [
    "Task",
    "TASKS",
    "ROUTE_OPERATIONS",
    "OPERATION_ROUTE",
    "Usage",
    "GatewayCall",
    "ModelError",
    "InvalidOutput",
    "ModelProvider",
    "PlanningInput",
    "TRIAGE_REASON_CODES",
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
    """Safe error class (``invalid_output``, ``provider_error:TimeoutError``,
    ``circuit_open``, ``deadline_exceeded``, ``budget_reserved``…): the cause of a fallback;
    never the raw output or an exception message, which could echo ticket text or secrets."""
    model: str | None = None
    """The routing file's model name (None for a gateway built without routing)."""
    rule: str | None = None
    """The routing rule that chose the chain this model belongs to."""
    routing: str | None = None
    """The routing file's ``version``."""
    cost_usd: float = Field(default=0.0, ge=0.0)
    """What the call cost at the model's configured prices."""
    degraded: bool = False
    """The answer (or attempt) came from a fallback: an earlier model of the chain failed."""
    attempt: int = Field(default=1, ge=1)
    """1 for the first try of this model, 2 for its first retry, …"""
    cached: bool = False
    """Answered from keel's model cache (:mod:`gateway.cache`): no request was sent, no tokens charged."""

    @property
    def tokens(self) -> int:
        """Total tokens charged to the tenant for this attempt."""
        return self.tokens_in + self.tokens_out


TRIAGE_REASON_CODES: frozenset[str] = frozenset({"low_confidence", "multiple_intents"})
"""The reason codes a router may give. Anything else is invalid output; and even these
two are re-decided by code (see ``gateway.gateway``): a model never decides alone that a
ticket is single-intent."""


class ModelError(KeelError, RuntimeError):
    """No provider produced a valid output for a task.

    The message is safe to show and to store in a run's record: it names the task and the
    providers tried, never model output or ticket text.
    """

    code = "model_unavailable"

    def __init__(self, task: Task, calls: list[GatewayCall]) -> None:
        self.task: Task = task
        self.calls: list[GatewayCall] = list(calls)
        tried = ", ".join(f"{c.provider} ({c.error})" for c in calls) or "none configured"
        super().__init__(f"no valid model output for task '{task}'; providers tried: {tried}")


class InvalidOutput(KeelError, ValueError):
    """Raised by the gateway's semantic checks: the output parsed but cannot be trusted
    (a tool outside the allowlist, an id that appears nowhere in the ticket or context)."""

    code = "invalid_output"


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
    tools: list[ToolCard] = Field(default_factory=list)
    """The allowlisted tools as declared (``tools.registry.cards``): what each does, its
    arguments' JSON Schema, and the operation it carries out (the planner's main action
    for that operation). Every allowlisted tool must have its card."""
    customer: dict[str, Any] | None = None
    orders: list[dict[str, Any]] = Field(default_factory=list)
    subscriptions: list[dict[str, Any]] = Field(default_factory=list)
    named_orders: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Orders named in the ticket text, keyed by id, whoever owns them."""

    @model_validator(mode="after")
    def _cards_cover_allowlist(self) -> PlanningInput:
        missing = sorted(set(self.allowlist) - {c.name for c in self.tools})
        if missing:
            raise ValueError(f"no tool card for allowlisted tools {missing}")
        return self

    def tool_for(self, operation: str) -> str | None:
        """The allowlisted tool that carries out ``operation``, per its declaration."""
        return next((c.name for c in self.tools if c.operation == operation and c.name in self.allowlist), None)
