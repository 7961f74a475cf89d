"""COMPLETE and ESCALATE_TO_HUMAN: the two ends of a run; both leave an audit row and
propose what to remember about the customer (:mod:`nodes.memory`)."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs.context import FinishDeps
from graphs.state import SupportState
from nodes.common import audit, record_status, traced
from nodes.memory import remember

__all__ = ["complete", "escalate_to_human"]


def _summary(state: SupportState, status: str) -> dict[str, Any]:
    return {
        "status": status,
        "route": state.get("route"),
        "reason_codes": state.get("reason_codes") or [],
        "actions": [{"tool": a["tool"], "decision": a["decision"], "state": a["state"]} for a in state.get("actions") or []],
    }


@traced("complete")
def complete(state: SupportState, runtime: Runtime[FinishDeps]) -> dict[str, Any]:
    """A completed (or reviewer-rejected) run."""
    ctx = runtime.context
    status = "rejected" if state.get("status") == "rejected" else "completed"
    remember(ctx, state, status)
    audit(ctx, state, "run_finished", _summary(state, status))
    record_status(ctx, state, status)
    update: dict[str, Any] = {"status": status}
    if status == "completed":
        update["reason_codes"] = []
    return update


@traced("escalate_to_human")
def escalate_to_human(state: SupportState, runtime: Runtime[FinishDeps]) -> dict[str, Any]:
    """Hand the run to a human with its reason codes; nothing further runs."""
    ctx = runtime.context
    codes = state.get("reason_codes") or ["escalated"]
    remember(ctx, {**state, "reason_codes": codes}, "escalated")  # type: ignore[typeddict-item]
    audit(ctx, state, "run_finished", {**_summary(state, "escalated"), "reason_codes": codes})
    record_status(ctx, state, "escalated")
    return {"status": "escalated", "reason_codes": codes}
