"""TRIAGE: the supervisor. Validates the ticket, screens it, and routes it to a specialist.

The model proposes a route with a confidence; the policy's threshold and the
injection screen decide what that means. Nothing here acts on the customer's systems.
"""

from __future__ import annotations

import uuid
from datetime import datetime, UTC
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from pydantic import ValidationError

from graphs.context import TriageDeps
from graphs.state import SupportState
from guards.budgets import new_budget
from guards.injection import screen_fields
from keel.types import Ticket
from nodes.common import ask_model, audit, escalation, marks_fallbacks, record_status, traced
from tools.registry import side_effect_operations

__all__ = ["triage"]


@traced("triage")
@marks_fallbacks(starts_run=True)
def triage(state: SupportState, config: RunnableConfig, runtime: Runtime[TriageDeps]) -> dict[str, Any]:
    """Route the ticket: ``{route, confidence, reason_codes}``, or escalate.

    The graph's input boundary: the caller's ticket (a JSON object) is validated here once
    and kept as a :class:`~keel.types.Ticket`; an invalid one escalates ``invalid_ticket``
    naming the fields, and the raw input is left as it came.
    """
    ctx = runtime.context
    conf = (config or {}).get("configurable", {})
    base: dict[str, Any] = {
        "thread_id": str(conf.get("thread_id", "")),
        "requester": str(conf.get("requester") or conf.get("user_id") or "anonymous"),
        "correlation_id": str(conf.get("correlation_id") or uuid.uuid4().hex),
        "status": "running",
        "actions": [],
        "reason_codes": [],
        "answer": None,
        "citations": [],
        "budget": new_budget(datetime.now(UTC)),
    }
    try:
        ticket = Ticket.model_validate(state.get("ticket"))
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "ticket" for err in e.errors()})
        return {**base, "route": "unknown", "confidence": 0.0, **escalation("invalid_ticket"), "evidence": [{"invalid_fields": fields}]}

    state = {**state, **base, "ticket": ticket}
    record_status(ctx, state, "running")
    # subject and body screened as one text; each span names its field and offsets into it
    shot = screen_fields({"subject": ticket.subject, "body": ticket.body}, customer_id=ticket.customer_id)
    result, stop = ask_model(ctx, state, "triage", lambda hook: ctx.gateway.triage(ticket, on_call=hook))
    if stop is not None:
        return {**base, "ticket": ticket, "screen": shot, "route": "unknown", "confidence": 0.0, **stop}

    route, reasons = result.route, list(result.reason_codes)
    if route != "unknown" and result.confidence < ctx.policy.router.min_confidence:
        route, reasons = "unknown", reasons + ["low_confidence"]
    if route == "unknown" and not reasons:
        reasons = ["low_confidence"]
    update = {
        **base,
        "ticket": ticket,
        "triage": result,
        "screen": shot,
        "route": route,
        "confidence": round(float(result.confidence), 4),
    }
    audit(
        ctx,
        {**state, **update},
        "route_decision",
        {"route": route, "confidence": update["confidence"], "reason_codes": reasons, "intents": list(result.intents),
         "injection": shot.model_dump()},
        actor="router",
    )
    if route == "unknown":
        # a flagged ticket reaches the reviewer marked as such, whatever else stopped it
        return {**update, **escalation(*reasons, *(["suspected_prompt_injection"] if shot.flagged else []))}
    if shot.flagged and (not result.intents or any(op in side_effect_operations() for op in result.intents)):
        return {**update, **escalation("suspected_prompt_injection")}
    return update
