"""Typed state of the support workflow.

Every value is plain JSON (dicts of the pydantic models in ``keel.types`` and
``keel.plan``), so checkpoints are portable across processes and versions, and the
state reads the same through LangGraph Studio, langgraph-sdk and keel's API. No
workflow state lives only in messages.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict  # pydantic reads its schema on Python 3.11

__all__ = ["SupportInput", "SupportState", "OutputAction"]


class SupportInput(TypedDict):
    """What a caller sends: ``{"ticket": TICKET}`` (batch contract)."""

    ticket: dict[str, Any]


class OutputAction(TypedDict):
    """One action as reported in the final state and the batch output."""

    tool: str
    args: dict[str, Any]
    decision: str | None
    state: str


class SupportState(TypedDict, total=False):
    """The whole run, checkpointed after every node."""

    ticket: dict[str, Any]
    """The validated ticket (``keel.types.Ticket``)."""
    thread_id: str
    """Run thread (from the run config)."""
    requester: str
    """Who started the run; may never approve it."""
    correlation_id: str
    """Ties logs, audit rows and traces of this run together."""
    triage: dict[str, Any]
    """Router verdict (``TriageResult``)."""
    screen: dict[str, Any]
    """Prompt-injection screen (``guards.injection.ScreenResult``) of the ticket text, merged
    with that of any flagged retrieved text; ``spans`` give each match's field, offsets and class."""
    extraction: dict[str, Any] | None
    """Typed facts from the ticket (``Extraction``)."""
    context: dict[str, Any]
    """Records read for the plan: customer, orders, subscriptions, articles."""
    evidence: list[dict[str, Any]]
    """What a reviewer sees: each read's tool and result."""
    plan: dict[str, Any] | None
    """The signed plan (``SignedPlan``)."""
    policy: dict[str, Any] | None
    """Policy verdict: overall decision, per-action decisions, reason codes."""
    approval: dict[str, Any] | None
    """The reviewer's decision once given."""
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
