"""POLICY_CHECK: deterministic rules decide each action's fate (guards/, never a prompt)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from graphs.state import SupportState
from keel.plan import SignedPlan
from nodes.common import audit, escalation, output_actions, record_status, traced

if TYPE_CHECKING:
    from keel.runtime import Runtime

__all__ = ["policy_check", "policy_facts"]


def policy_facts(rt: "Runtime", state: SupportState):
    """The records and clock the policy judges the plan against."""
    from guards.policy import PolicyFacts

    ticket = state["ticket"]
    context = state.get("context") or {}
    orders = {o["id"]: o for o in context.get("orders") or []}
    orders.update({k: v for k, v in (context.get("named_orders") or {}).items() if v is not None})
    return PolicyFacts(
        tenant=ticket["tenant"],
        customer_id=ticket["customer_id"],
        now=rt.now(),
        customer=context.get("customer"),
        orders=orders,
        subscriptions={
            **{k: v for k, v in (context.get("named_subscriptions") or {}).items() if v is not None},
            **{s["id"]: s for s in context.get("subscriptions") or []},
        },
    )


@traced("policy_check")
def policy_check(state: SupportState, *, rt: "Runtime") -> dict[str, Any]:
    """Evaluate the plan; route to execute, approval or escalation."""
    signed = SignedPlan.model_validate(state["plan"])
    verdict = rt.engine.evaluate_plan(
        signed.plan.actions,
        policy_facts(rt, state),
        route=state["route"],
        injection_flagged=bool((state.get("screen") or {}).get("flagged")),
    )
    policy = verdict.model_dump(mode="json")
    update: dict[str, Any] = {"policy": policy}
    audit(rt, state, "policy_decision", {"plan_hash": signed.hash, "policy_version": rt.policy.version, **policy}, actor="policy")
    new_state = {**state, **update}
    if verdict.overall in ("escalate", "deny"):
        return {**update, "actions": output_actions(new_state), **escalation(*verdict.reason_codes)}
    if verdict.overall == "approve":
        states = ["pending_approval" if d.decision in ("approve", "execute") else "not_run" for d in verdict.per_action]
        audit(rt, new_state, "approval_requested", {"plan_hash": signed.hash})
        record_status(rt, new_state, "awaiting_approval", plan_hash=signed.hash)
        return {**update, "status": "awaiting_approval", "actions": output_actions(new_state, states)}
    return {**update, "actions": output_actions(new_state)}
