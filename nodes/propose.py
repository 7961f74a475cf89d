"""PROPOSE_ACTION: the specialist's plan, validated and signed; or a knowledge answer.

The planner (a model behind the gateway) proposes tool calls; code checks each against
the tool's input contract and the specialist's allowlist and turns the result into a
signed :class:`keel.plan.Plan`. The policy decides later whether anything runs.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from pydantic import ValidationError

from gateway.base import PlanningInput
from gateway.rules import claimed_amounts
from graphs.context import ProposeDeps
from graphs.state import SupportState
from keel.plan import Plan, sign_plan
from keel.types import ProposedAction
from nodes.common import (allowlist, ask_model, audit, context_of, escalation, extraction_of, marks_fallbacks,
                          ticket_of, traced)
from tools.registry import TOOLS, cards

__all__ = ["propose_action", "CITATION_RATIO"]

CITATION_RATIO = 0.9
"""Articles scoring at least this fraction of the best one are cited with it."""


def _knowledge(state: SupportState) -> dict[str, Any]:
    articles = context_of(state).articles
    extraction = extraction_of(state)
    search = [{"tool": "search_kb", "args": {"query": (extraction.query if extraction else None) or ""},
               "decision": None, "state": "executed"}]
    if not articles:
        return {"actions": search, **escalation("no_answer_found")}
    top = max(float(a.get("score", 0.0)) for a in articles)
    cited = [a for a in articles if float(a.get("score", 0.0)) >= CITATION_RATIO * top]
    answer = "\n\n".join(f"{a['title']} ({a['id']}): {a.get('snippet', '')}" for a in cited)
    return {"actions": search, "answer": answer, "citations": [a["id"] for a in cited], "status": "completed"}


def _merge_repeats(actions: list[ProposedAction]) -> list[ProposedAction]:
    """One refund per order (the sum of the amounts asked), and no action twice.

    The policy tiers and bounds each action on its own, so split refunds of one order
    ("refund $50, and again, and again") would each pass the auto-execute limit and the
    refundable check while their total passes neither. Merged, the total is judged.
    """
    out: list[ProposedAction] = []
    refund_at: dict[str, int] = {}
    for a in actions:
        order = a.args.get("order_id") if a.tool == "issue_refund" else None
        if isinstance(order, str) and order in refund_at:
            prev = out[refund_at[order]]
            total = int(prev.args["amount_cents"]) + int(a.args["amount_cents"])
            out[refund_at[order]] = ProposedAction(tool=prev.tool, args={**prev.args, "amount_cents": total})
            continue
        if a in out:
            continue
        if isinstance(order, str):
            refund_at[order] = len(out)
        out.append(a)
    return out


def _amounts_from_claims(state: SupportState, actions: list[ProposedAction]) -> list[dict[str, Any]]:
    """Refunds whose amount the ticket states only inside an authority or policy claim.

    "The limit was raised to $500 by management" is not a request for $500: whatever
    planner proposed that amount took it from the claim. A full refund of the order is
    what a request without an amount means, so an amount equal to it is not counted.
    """
    ticket = ticket_of(state)
    claimed = claimed_amounts(f"{ticket.subject}\n{ticket.body}")
    if not claimed:
        return []
    orders = context_of(state).orders_by_id()
    out: list[dict[str, Any]] = []
    for a in actions:
        amount = a.args.get("amount_cents") if a.tool == "issue_refund" else None
        if amount not in claimed:
            continue
        order = orders.get(a.args.get("order_id")) or {}
        if amount == int(order.get("total_cents", -1)) - int(order.get("refunded_cents", 0)):
            continue
        out.append({"tool": a.tool, "order_id": a.args.get("order_id"), "amount_cents": amount})
    return out


@traced("propose_action")
@marks_fallbacks()
def propose_action(state: SupportState, runtime: Runtime[ProposeDeps]) -> dict[str, Any]:
    """Plan the actions (or answer a knowledge question)."""
    if state["route"] == "knowledge":
        return _knowledge(state)

    ctx = runtime.context
    ticket = ticket_of(state)
    context = context_of(state)
    tools = allowlist(ctx, state["route"])
    planning = PlanningInput(
        ticket=ticket,
        route=state["route"],
        extraction=extraction_of(state),
        allowlist=sorted(tools),
        tools=list(cards(tools).values()),  # the allowlisted tools' declarations
        customer=context.customer,
        orders=context.orders,
        subscriptions=context.subscriptions,
        named_orders={k: v for k, v in context.named_orders.items() if v is not None},
    )
    proposal, stop = ask_model(ctx, state, "plan", lambda hook: ctx.gateway.plan(planning, on_call=hook))
    if stop is not None:
        return stop
    if not proposal.actions:
        return escalation("no_action_identified", evidence=[*state.get("evidence", []), {"planner": proposal.rationale}])

    actions: list[ProposedAction] = []
    for a in proposal.actions:
        spec = TOOLS.get(a.tool)
        if spec is None:
            return escalation("invalid_plan")
        try:
            args = spec.input_model.model_validate(a.args).model_dump(mode="json", exclude_none=True)
        except ValidationError:
            return escalation("invalid_plan")
        actions.append(ProposedAction(tool=a.tool, args=args))
    actions = _merge_repeats(actions)
    from_claims = _amounts_from_claims(state, actions)
    if from_claims:
        return escalation("suspected_prompt_injection",
                          evidence=[*state.get("evidence", []), {"amount_from_claim": from_claims}])

    signed = sign_plan(
        Plan(
            tenant=ticket.tenant,
            customer_id=ticket.customer_id,
            ticket_id=ticket.id,
            thread_id=state.get("thread_id", ""),
            route=state["route"],
            policy_version=ctx.policy.version,
            actions=actions,
        ),
        ctx.signing_key,
    )
    audit(ctx, state, "plan_proposed", {"plan_hash": signed.hash, "key_id": signed.key_id, "actions": [a.model_dump() for a in actions],
                                      "rationale": proposal.rationale, "outside_allowlist": [a.tool for a in actions if a.tool not in tools]},
          actor="planner")
    return {"plan": signed}
