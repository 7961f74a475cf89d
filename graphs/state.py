"""Typed state of the support workflow.

Each field holds its real type: the ticket a :class:`~keel.types.Ticket`, the router's
verdict a :class:`~keel.types.TriageResult`, the signed plan a :class:`~keel.plan.SignedPlan`,
the policy verdict a :class:`~guards.policy.PlanDecision`, and so on. A value is parsed
once, where it enters (the graph input by TRIAGE, a model's output by the gateway, a plan
when it is signed), and every later node reads the typed value. LangGraph's checkpoint
serializer stores these pydantic models and rebuilds them on load (:data:`STATE_MODELS`
lists them for ``LANGGRAPH_STRICT_MSGPACK``).

What leaves keel stays plain JSON of the same shape as before: the API and the stream
dump every model (``engine.jsonable``), the batch output reads only plain fields, and the
approval interrupt is built as a dict. Checkpoints written before these fields were typed
hold dicts; the accessors of :mod:`nodes.common` (``plan_of``, ``policy_of``, …) parse such
a value when they meet one, and the models also read like those dicts
(``state["plan"]["hash"]``, :class:`keel.types.StrictModel`), so old threads resume as is.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads its schema on Python 3.11

from guards.injection import ScreenResult, Span
from guards.policy import PlanDecision
from keel.plan import Plan, SignedPlan
from keel.types import (ActionDecision, Extraction, PolicyCheck, ProposedAction, StrictModel, Ticket,
                        TriageResult)

__all__ = ["SupportInput", "SupportState", "OutputAction", "RetrievedContext", "STATE_MODELS"]


class SupportInput(TypedDict):
    """What a caller sends: ``{"ticket": TICKET}`` (batch contract). TRIAGE validates it."""

    ticket: dict[str, Any]


class OutputAction(TypedDict):
    """One action as reported in the final state and the batch output."""

    tool: str
    args: dict[str, Any]
    decision: str | None
    state: str


class RetrievedContext(StrictModel):
    """The records RETRIEVE_CONTEXT read for the plan and the policy (fixture-shaped dicts,
    as the tools and the back office return them)."""

    customer: dict[str, Any] | None = None
    """The ticket's customer, if the customer tool found them."""
    account: dict[str, Any] | None = None
    """The customer's login account (access route only)."""
    orders: list[dict[str, Any]] = Field(default_factory=list)
    """The customer's own orders."""
    subscriptions: list[dict[str, Any]] = Field(default_factory=list)
    """The customer's own subscriptions."""
    named_orders: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    """Orders the ticket names, whoever owns them (None: no such order)."""
    named_subscriptions: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    """Subscriptions the ticket names, whoever owns them (None: no such subscription)."""
    articles: list[dict[str, Any]] = Field(default_factory=list)
    """Knowledge-base articles found (screened: flagged ones are left out)."""

    def orders_by_id(self) -> dict[str, dict[str, Any]]:
        """Every order known to the run by id: the customer's, then those the ticket names."""
        out = {str(o.get("id")): o for o in self.orders}
        out.update({k: v for k, v in self.named_orders.items() if v is not None})
        return out

    def subscriptions_by_id(self) -> dict[str, dict[str, Any]]:
        """Every subscription known to the run by id (the customer's own win over named ones)."""
        return {**{k: v for k, v in self.named_subscriptions.items() if v is not None},
                **{str(s.get("id")): s for s in self.subscriptions}}


STATE_MODELS: tuple[type, ...] = (
    Ticket, TriageResult, Extraction, ScreenResult, Span, RetrievedContext, SignedPlan, Plan, ProposedAction,
    PlanDecision, ActionDecision, PolicyCheck,
)
"""Every model class stored in support state, for a checkpoint serializer's msgpack allowlist."""


class SupportState(TypedDict, total=False):
    """The whole run, checkpointed after every node."""

    ticket: Ticket
    """The validated ticket (graph input parsed by TRIAGE; the raw input until then)."""
    thread_id: str
    """Run thread (from the run config)."""
    requester: str
    """Who started the run; may never approve it."""
    correlation_id: str
    """Ties logs, audit rows and traces of this run together."""
    triage: TriageResult
    """Router verdict."""
    screen: ScreenResult
    """Prompt-injection screen of the ticket text, merged with that of any flagged retrieved
    text; ``spans`` give each match's field, offsets and class."""
    extraction: Extraction | None
    """Typed facts from the ticket."""
    context: RetrievedContext
    """Records read for the plan: customer, orders, subscriptions, articles."""
    evidence: list[dict[str, Any]]
    """What a reviewer sees: each read's tool and result."""
    plan: SignedPlan | None
    """The signed plan."""
    policy: PlanDecision | None
    """Policy verdict: overall decision, per-action decisions, reason codes."""
    approval: dict[str, Any] | None
    """The reviewer's decision once given (written by AWAIT_APPROVAL)."""
    results: list[dict[str, Any]]
    """Tool results of executed actions, in plan order."""
    verification: dict[str, Any] | None
    """What re-reading the changed records showed."""
    budget: dict[str, Any]
    """Per-run caps consumed so far (tool calls, retries, wall clock)."""
    route: str
    """billing | orders | access | knowledge | unknown."""
    confidence: float
    """Router confidence."""
    status: str
    """running | completed | awaiting_approval | escalated | rejected."""
    actions: list[OutputAction]
    """The plan's actions with decision and state (batch contract)."""
    reason_codes: list[str]
    """Why the run ended as it did."""
    answer: str | None
    """Answer text for knowledge and tracking tickets."""
    citations: list[str]
    """Knowledge-base article ids the answer is drawn from."""
    degraded: bool
    """A model answer this run used came from a fallback (an earlier model of the routing
    chain failed, timed out or had its circuit open): what the batch output's ``degraded``
    says, visible to API and Studio clients in the run's values."""
    degraded_causes: list[str]
    """Why, one ``task:model:cause`` per failed attempt before a fallback answered
    (``triage:small:provider_error:APIConnectionError``); never model output or ticket text."""
