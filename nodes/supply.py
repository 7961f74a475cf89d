"""The supply workflow's nodes, made of keel's building blocks (:mod:`nodes.blocks`).

What is supply's own is small: reading an event, routing and planning it with the
deterministic rules of :mod:`gateway.supply_rules`, and which records its policy judges a
plan against (:func:`supply_facts`). The policy gate, the signed-plan approval interrupt,
exactly-once execution, VERIFY through the tool declarations, and the two ends of a run
are the blocks support uses too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError

from gateway.supply_rules import SupplyEvent, SupplyTriage, known_ids, plan_event, screen_event, triage_event
from graphs.supply_state import SupplyContext, SupplyState
from guards.budgets import new_budget
from guards.supply_pack import SUPPLY_SIDE_EFFECT_TOOLS
from guards.supply_policy import SupplyFacts
from keel.plan import Plan
from keel.types import ProposedAction
from nodes import blocks
from nodes.common import escalation, plan_of, traced
from tools.registry import verify_action
from tools.runner import ToolContext
from tools.supply import SUPPLY_TOOLS

__all__ = ["SUPPLY", "supply_facts", "triage", "read_context", "propose", "policy_check", "await_approval",
           "execute", "verify", "complete", "escalate_to_human"]


def event_of(state: SupplyState) -> SupplyEvent:
    """The run's event as a typed value."""
    return SupplyEvent.model_validate(state["event"])


def _run_of(state: SupplyState) -> blocks.RunRef:
    raw = state.get("event") or {}
    return blocks.RunRef(tenant=str(raw.get("tenant") or "unknown"), owner=str(raw.get("account_id") or ""),
                         subject_id=raw.get("id"), thread_id=state.get("thread_id"), requester=state.get("requester"),
                         correlation_id=state.get("correlation_id"), route=state.get("route"))


def supply_facts(ctx: SupplyContext, state: SupplyState, tx: Any = None) -> SupplyFacts:
    """Every record of the tenant the rules read (other accounts' too, so that naming one is
    ``not_owner``), keel's own notices and claims included, at the run's clock."""
    event = event_of(state)
    t = event.tenant

    def by_id(kind: str) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): r for r in ctx.records.all(t, kind)}

    # keel's notices and claims in other runs' plans awaiting approval count as sent / filed
    pending = [p for p in ctx.records.all(t, "pending") if p.get("thread_id") != state.get("thread_id")]
    notices = ctx.records.all(t, "notice") + [p for p in pending if p["tool"] == "notify_customer"
                                               and ctx.policy.notify_customer.count_pending]
    claims = ctx.records.all(t, "claim") + [p for p in pending if p["tool"] == "open_carrier_claim"
                                             and ctx.policy.open_carrier_claim.count_pending]
    return SupplyFacts(tenant=t, account_id=event.account_id, now=ctx.clock(), shipments=by_id("shipment"),
                       purchase_orders=by_id("purchase_order"), inventory=ctx.records.all(t, "inventory"),
                       suppliers=by_id("supplier"), carriers=by_id("carrier"), notices=notices, claims=claims)


def _hold(ctx: SupplyContext, state: SupplyState, signed: Any) -> None:
    """A plan waiting for approval holds its notices (sent now) and claims (open)."""
    thread = str(state.get("thread_id") or signed.plan.thread_id or "")
    now = ctx.clock().isoformat()
    items = [{"tool": a.tool, **a.args, "sent_at": now, "status": "open"} for a in signed.plan.actions
             if a.tool in ("notify_customer", "open_carrier_claim")]
    if thread and items:
        ctx.records.hold(signed.plan.tenant, thread, signed.hash, items)


def _release(ctx: SupplyContext, state: SupplyState) -> None:
    if state.get("thread_id"):
        ctx.records.release(_run_of(state).tenant, str(state["thread_id"]))


def _after_edit(action: ProposedAction) -> ProposedAction:
    """A substitution's total follows its (lowered) quantity."""
    if action.tool == "substitute_supplier" and isinstance(action.args.get("qty"), int):
        unit = action.args.get("unit_price_cents")
        if isinstance(unit, int):
            return ProposedAction(tool=action.tool, args={**action.args, "amount_cents": unit * action.args["qty"]})
    return action


SUPPLY = blocks.Workflow(
    run_of=_run_of,
    facts=supply_facts,
    allowlist=lambda ctx, route: ctx.policy.allowlist(route),
    side_effect=lambda tool: tool in SUPPLY_SIDE_EFFECT_TOOLS,
    after_edit=_after_edit,
    hold=_hold,
    release=_release,
)
"""The supply workflow as the building blocks see it."""


@traced("supply.triage")
def triage(state: SupplyState, config: RunnableConfig, ctx: SupplyContext) -> dict[str, Any]:
    """Validate the event, screen it and route it: one route's side effects, or escalate
    (``low_confidence``, ``multiple_intents``, ``suspected_prompt_injection``)."""
    conf = (config or {}).get("configurable") or {}
    base: dict[str, Any] = {"thread_id": str(conf.get("thread_id") or ""),
                            "requester": str(conf.get("requester") or conf.get("user_id") or "anonymous"),
                            "correlation_id": str(conf.get("correlation_id") or uuid.uuid4().hex),
                            "budget": new_budget(datetime.now(UTC)), "actions": [], "reason_codes": []}
    try:
        event = event_of(state)
    except ValidationError:
        return {**base, "route": "unknown", "confidence": 0.0, **escalation("invalid_event")}
    screen = screen_event(event)
    verdict = triage_event(event, ctx.policy)
    base.update(event=event.model_dump(), screen=screen, triage=verdict.model_dump(), route=verdict.route,
                confidence=verdict.confidence)
    blocks.audit_run(ctx, _run_of({**state, **base}), "triage", verdict.model_dump(mode="json"))
    if verdict.route == "unknown" or verdict.confidence < ctx.policy.router.min_confidence or verdict.reason_codes:
        return {**base, **escalation(*(verdict.reason_codes or ["low_confidence"]))}
    return base


@traced("supply.read_context")
def read_context(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """Read the records the event names through the tool runner (ownership enforced: another
    account's record is never seen by the planner), plus the tenant's shared records."""
    event, run = event_of(state), _run_of(state)
    allowed = ctx.policy.allowlist(state.get("route", "unknown"))
    call = ToolContext(tenant=event.tenant, customer_id=event.account_id, user_id=run.requester or "anonymous",
                       allowlist=allowed, correlation_id=run.correlation_id or "", now=ctx.clock())
    ids = known_ids(event.text)
    own: dict[str, dict[str, dict[str, Any]]] = {"shipments": {}, "purchase_orders": {}}
    evidence: list[dict[str, Any]] = []
    reads = [("get_shipment", "shipments", "shipment_id", i) for i in ids["shipments"]]
    reads += [("get_purchase_order", "purchase_orders", "po_id", i) for i in ids["purchase_orders"]]
    for tool, table, key, rid in reads:
        if tool not in allowed:
            continue
        res = ctx.tools.call(tool, {key: rid}, call)
        evidence.append({"tool": tool, "args": {key: rid}, "ok": res.ok, "error": res.error_code,
                         "output": res.output})
        if res.ok and res.output:
            own[table][rid] = res.output["record"]
    t = event.tenant
    facts = SupplyFacts(tenant=t, account_id=event.account_id, now=ctx.clock(), **own,
                        inventory=ctx.records.all(t, "inventory"),
                        suppliers={r["id"]: r for r in ctx.records.all(t, "supplier")},
                        carriers={r["id"]: r for r in ctx.records.all(t, "carrier")})
    return {"context": facts.model_dump(mode="json"), "evidence": evidence}


@traced("supply.propose")
def propose(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """Plan the event's actions and sign the plan (what a reviewer approves, what execute accepts)."""
    event = event_of(state)
    facts = SupplyFacts.model_validate(state.get("context") or {"tenant": event.tenant, "account_id": event.account_id,
                                                                "now": ctx.clock()})
    proposal = plan_event(event, SupplyTriage.model_validate(state["triage"]), facts, ctx.policy)
    if proposal.escalate:
        return escalation(proposal.escalate)
    if not proposal.actions:
        return escalation("low_confidence")
    plan = Plan(tenant=event.tenant, customer_id=event.account_id, ticket_id=event.id,
                thread_id=state.get("thread_id") or "", route=state["route"], policy_version=ctx.policy.version,
                actions=proposal.actions)
    signed = blocks.sign(plan, ctx)
    blocks.audit_run(ctx, _run_of(state), "plan_proposed", {"plan_hash": signed.hash, **plan.model_dump(mode="json")})
    return {"plan": signed}


@traced("supply.policy_check")
def policy_check(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """The policy gate block over supply's facts."""
    return blocks.policy_gate(state, ctx, SUPPLY)


@traced("supply.await_approval")
def await_approval(state: SupplyState, config: RunnableConfig, ctx: SupplyContext) -> dict[str, Any]:
    """The signed-plan approval block, under supply-v1's ``[approvals]``."""
    return blocks.await_approval(state, config, ctx, SUPPLY)


@traced("supply.execute")
def execute(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """The exactly-once execute block."""
    return blocks.execute_plan(state, ctx, SUPPLY)


@traced("supply.verify")
def verify(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """Re-read what each side effect changed, as its declaration says (``Verify``); a read's
    result is the answer."""
    event = event_of(state)
    signed = plan_of(state)
    checked: list[dict[str, Any]] = []
    for r in state.get("results") or []:
        if r.get("dry_run"):  # KEEL_ENV=staging: nothing was written, nothing to re-read
            checked.append({"index": r["index"], "tool": r["tool"], "verified": None, "dry_run": True})
            continue
        args = signed.plan.actions[r["index"]].args if signed is not None else {}
        ok = verify_action(ctx.records, event.tenant, r["tool"], args, r.get("output"), registry=SUPPLY_TOOLS)
        checked.append({"index": r["index"], "tool": r["tool"], "verified": ok})
    if any(c["verified"] is False for c in checked):
        return {"verification": {"checks": checked}, **escalation("verification_failed")}
    reads = [r for r in state.get("results") or [] if r["tool"] not in SUPPLY_SIDE_EFFECT_TOOLS]
    answer = None
    if reads and len(reads) == len(state.get("results") or []):
        answer = "; ".join(f"{r['tool']}: {r['output']}" for r in reads)[:2000]
    return {"verification": {"checks": checked}, "answer": answer}


@traced("supply.complete")
def complete(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """The end of a completed (or rejected) run."""
    return blocks.finish(state, ctx, SUPPLY, escalated=False)


@traced("supply.escalate_to_human")
def escalate_to_human(state: SupplyState, ctx: SupplyContext) -> dict[str, Any]:
    """Hand the run to a human with its reason codes."""
    return blocks.finish(state, ctx, SUPPLY, escalated=True)
