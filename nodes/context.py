"""RETRIEVE_CONTEXT: the specialist reads what it needs, through its allowlisted tools.

Extraction (order id, amount, operation) comes from the model gateway; records come
from tools, and each read is kept as evidence for the reviewer. Retrieved text is
screened for injected instructions like ticket text: it is data, never instructions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from graphs.state import SupportState
from guards.budgets import charge_tool_call, check
from guards.injection import screen
from nodes.common import allowlist, ask_model, attempt_budget, escalation, ticket_of, tool_context, traced

if TYPE_CHECKING:
    from keel.runtime import Runtime

__all__ = ["retrieve_context"]


class _Budget(Exception):
    pass


@traced("retrieve_context")
def retrieve_context(state: SupportState, *, rt: "Runtime") -> dict[str, Any]:
    """Extract the ticket's facts and read the records a plan would touch."""
    ticket = ticket_of(state)
    route = state["route"]
    tools = allowlist(rt, route)
    extraction, stop = ask_model(rt, state, "extract", lambda hook: rt.gateway.extract(ticket, route, on_call=hook))
    if stop is not None:
        return stop

    budget = dict(state.get("budget") or {})
    evidence: list[dict[str, Any]] = []
    ctx = tool_context(rt, state)

    def read(tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal budget
        if tool not in tools:
            return None
        res = rt.tools.call(tool, args, ctx)
        budget = charge_tool_call(budget, max(0, res.attempts - 1))
        if check(attempt_budget(budget), rt.caps, datetime.now(timezone.utc)):
            raise _Budget()
        evidence.append({"tool": tool, "args": args, "ok": res.ok, "output": res.output, "error": res.error_code})
        return res.output if res.ok else None

    context: dict[str, Any] = {"customer": None, "account": None, "orders": [], "subscriptions": [], "named_orders": {}, "named_subscriptions": {}, "articles": []}
    try:
        if route == "knowledge":
            query = extraction.query or f"{ticket.subject}. {ticket.body}"
            found = read("search_kb", {"query": query, "limit": 3}) or {"results": []}
            safe, dropped = [], []
            for art in found.get("results", []):
                (dropped if screen(f"{art.get('title', '')}\n{art.get('snippet', '')}").flagged else safe).append(art)
            context["articles"] = safe
            if dropped:
                evidence.append({"screened_out_articles": [a["id"] for a in dropped], "reason": "suspected_prompt_injection"})
        else:
            context["customer"] = read("get_customer", {"customer_id": ticket.customer_id})
            if context["customer"] is not None:
                context["orders"] = rt.backoffice.list_orders(ticket.tenant, ticket.customer_id)
                context["subscriptions"] = rt.backoffice.list_subscriptions(ticket.tenant, ticket.customer_id)
            if extraction.order_id:
                order = read("get_order", {"order_id": extraction.order_id})
                if order is None and evidence and evidence[-1].get("error") == "not_owner":
                    # the tool rightly withholds another customer's order from the agent; the
                    # policy still needs its owner to deny the action as not_owner
                    order = rt.backoffice.get_order(ticket.tenant, extraction.order_id)
                context["named_orders"][extraction.order_id] = order
            if extraction.subscription_id:
                # no allowlisted tool reads a subscription by id: a store read, for the policy only
                context["named_subscriptions"][extraction.subscription_id] = rt.backoffice.get_subscription(
                    ticket.tenant, extraction.subscription_id)
            if route == "access":
                context["account"] = read("get_account", {"customer_id": ticket.customer_id})
    except _Budget:
        return {"budget": budget, "evidence": evidence, **escalation("budget_exceeded")}

    return {"extraction": extraction.model_dump(), "context": context, "evidence": evidence, "budget": budget}
