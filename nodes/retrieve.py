"""RETRIEVE_CONTEXT: the specialist reads what it needs, through its allowlisted tools.

Extraction (order id, amount, operation) comes from the model gateway; records come
from tools, and each read is kept as evidence for the reviewer. Retrieved text is
screened for injected instructions like ticket text: it is data, never instructions.
"""

from __future__ import annotations

import re
from datetime import datetime, UTC
from typing import Any

from langgraph.runtime import Runtime

from graphs.context import RetrieveDeps
from graphs.state import RetrievedContext, SupportState
from guards.budgets import charge_tool_call, check
from guards.injection import ScreenResult, merge, screen_fields
from keel.errors import KeelError
from nodes.common import (allowlist, ask_model, attempt_budget, audit, escalation, marks_fallbacks, screen_of,
                          ticket_of, tool_context, traced)

__all__ = ["retrieve_context"]


class _Budget(KeelError):
    pass


_STRUCTURED_KEY = re.compile(r"^(?:id|status|currency|locked|plan)$|_(?:id|at|cents|level|enabled)$")
"""Record fields that hold ids, timestamps, enums or numbers, not free text."""


def _record_texts(context: RetrievedContext) -> dict[str, str]:
    """The free text of every record read (a carrier's status line, an address, a name,
    an email), keyed ``kind:ID.field``: text a planner reads, so it is screened like the
    ticket (a stored address or a carrier note can carry instructions too)."""
    out: dict[str, str] = {}

    def add(kind: str, rec: Any, rid: str | None = None) -> None:
        if not isinstance(rec, dict):
            return
        rid = str(rec.get("id") or rid or kind)
        for key, value in rec.items():
            if isinstance(value, str) and value.strip() and not _STRUCTURED_KEY.search(key):
                out[f"{kind}:{rid}.{key}"] = value
            elif isinstance(value, dict):
                add(f"{kind}.{key}", value, rid)

    add("customer", context.customer)
    add("account", context.account)
    for o in [*context.orders, *context.named_orders.values()]:
        add("order", o)
    for sub in [*context.subscriptions, *context.named_subscriptions.values()]:
        add("subscription", sub)
    return out


@traced("retrieve_context")
@marks_fallbacks()
def retrieve_context(state: SupportState, runtime: Runtime[RetrieveDeps]) -> dict[str, Any]:
    """Extract the ticket's facts and read the records a plan would touch."""
    ctx = runtime.context
    ticket = ticket_of(state)
    route = state["route"]
    tools = allowlist(ctx, route)
    extraction, stop = ask_model(ctx, state, "extract", lambda hook: ctx.gateway.extract(ticket, route, on_call=hook))
    if stop is not None:
        return stop

    budget = dict(state.get("budget") or {})
    evidence: list[dict[str, Any]] = []
    calls = tool_context(ctx, state)

    def read(tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
        nonlocal budget
        if tool not in tools:
            return None
        res = ctx.tools.call(tool, args, calls)
        if getattr(res, "cached", False):  # answered from the tool cache (tools.cache): the audit says so
            audit(ctx, state, "tool_call", {"tool": tool, "args": args, "ok": True, "cached": True})
        budget = charge_tool_call(budget, max(0, res.attempts - 1))
        if check(attempt_budget(budget), ctx.caps, datetime.now(UTC)):
            raise _Budget()
        evidence.append({"tool": tool, "args": args, "ok": res.ok, "output": res.output, "error": res.error_code})
        return res.output if res.ok else None

    retrieved: list[ScreenResult] = []
    context: dict[str, Any] = {"customer": None, "account": None, "orders": [], "subscriptions": [], "named_orders": {}, "named_subscriptions": {}, "articles": []}
    try:
        if route == "knowledge":
            query = extraction.query or f"{ticket.subject}. {ticket.body}"
            found = read("search_kb", {"query": query, "limit": 3}) or {"results": []}
            safe, dropped = [], []
            for art in found.get("results", []):
                shot = screen_fields({f"kb:{art.get('id')}.title": str(art.get("title", "")),
                                      f"kb:{art.get('id')}.snippet": str(art.get("snippet", ""))}, sep="\n")
                (dropped if shot.flagged else safe).append(art)
                if shot.flagged:
                    retrieved.append(shot)
            context["articles"] = safe
            if dropped:
                evidence.append({"screened_out_articles": [a["id"] for a in dropped], "reason": "suspected_prompt_injection"})
        else:
            context["customer"] = read("get_customer", {"customer_id": ticket.customer_id})
            if context["customer"] is not None:
                context["orders"] = ctx.backoffice.list_orders(ticket.tenant, ticket.customer_id)
                context["subscriptions"] = ctx.backoffice.list_subscriptions(ticket.tenant, ticket.customer_id)
            if extraction.order_id:
                order = read("get_order", {"order_id": extraction.order_id})
                if order is None and evidence and evidence[-1].get("error") == "not_owner":
                    # the tool rightly withholds another customer's order from the agent; the
                    # policy still needs its owner to deny the action as not_owner
                    order = ctx.backoffice.get_order(ticket.tenant, extraction.order_id)
                context["named_orders"][extraction.order_id] = order
            if extraction.subscription_id:
                # no allowlisted tool reads a subscription by id: a store read, for the policy only
                context["named_subscriptions"][extraction.subscription_id] = ctx.backoffice.get_subscription(
                    ticket.tenant, extraction.subscription_id)
            if route == "access":
                context["account"] = read("get_account", {"customer_id": ticket.customer_id})
    except _Budget:
        return {"budget": budget, "evidence": evidence, **escalation("budget_exceeded")}

    records_read = RetrievedContext.model_validate(context)
    update: dict[str, Any] = {"extraction": extraction, "context": records_read, "evidence": evidence, "budget": budget}
    records = screen_fields(_record_texts(records_read), sep=".\n\n")
    if records.flagged:
        retrieved.append(records)
        evidence.append({"retrieved_text_flagged": sorted({s.source for s in records.spans if s.source}),
                         "reason": "suspected_prompt_injection"})
    if retrieved:
        # retrieved text is data like the ticket: a flag here marks the run (the policy then
        # escalates any side effect, rule 10) and its spans reach the reviewer with the ticket's
        update["screen"] = merge(screen_of(state), *retrieved)
    return update
