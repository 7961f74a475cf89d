"""POLICY_CHECK: deterministic rules decide each action's fate (guards/, never a prompt)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from graphs.context import SupportContext
from graphs.state import SupportState
from guards.policy import PolicyFacts
from keel.db import Tx
from keel.plan import SignedPlan, idempotency_key
from nodes.common import audit, escalation, output_actions, record_status, traced
from tools.contracts import ToolError

__all__ = ["policy_check", "policy_facts", "refund_guard"]

_SEVERITY = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}


def _refund_actions(state: SupportState) -> tuple[SignedPlan | None, list[int]]:
    """The plan in state and the indexes of its refunds (none: no velocity facts needed)."""
    raw = state.get("plan")
    if not raw:
        return None, []
    signed = SignedPlan.model_validate(raw)
    return signed, [i for i, a in enumerate(signed.plan.actions) if a.tool == "issue_refund"]


def _keel_refunds(ctx: SupportContext, state: SupportState, tx: Tx | None) -> list[dict[str, Any]]:
    """The customer's other refunds by keel (executed, pending approval), for the velocity rule.

    Read only for a plan that refunds. The run's own holds and the refunds its own plan
    already issued (a resumed or re-decided execution) are left out: the engine counts
    the plan's refunds itself.
    """
    signed, refunds = _refund_actions(state)
    if signed is None or not refunds:
        return []
    ticket = state["ticket"]
    thread = signed.plan.thread_id or str(state.get("thread_id") or "")
    own = [idempotency_key(thread, signed.hash, i) for i in refunds]
    since = ctx.clock() - ctx.policy.refund.velocity.period
    return ctx.refunds.recent(ticket["tenant"], ticket["customer_id"], since,
                                       exclude_thread=thread, exclude_keys=own, tx=tx)


def policy_facts(ctx: SupportContext, state: SupportState, tx: Tx | None = None) -> PolicyFacts:
    """The records and clock the policy judges the plan against (``tx``: read the
    customer's refunds in that transaction)."""
    ticket = state["ticket"]
    context = state.get("context") or {}
    orders = {o["id"]: o for o in context.get("orders") or []}
    orders.update({k: v for k, v in (context.get("named_orders") or {}).items() if v is not None})
    return PolicyFacts(
        tenant=ticket["tenant"],
        customer_id=ticket["customer_id"],
        now=ctx.clock(),
        customer=context.get("customer"),
        orders=orders,
        subscriptions={
            **{k: v for k, v in (context.get("named_subscriptions") or {}).items() if v is not None},
            **{s["id"]: s for s in context.get("subscriptions") or []},
        },
        keel_refunds=_keel_refunds(ctx, state, tx),
    )


def refund_guard(ctx: SupportContext, state: SupportState, signed: SignedPlan, index: int,
                 authorized: str) -> Callable[[Tx], None]:
    """The refund's last check, for the tool runner to make inside the refund's transaction.

    Under the customer's refund lock it decides the signed plan again on the refunds
    committed by then; if action ``index`` now needs more than ``authorized`` (``execute``
    for a plan that ran without a human, ``approve`` for an approved one), the refund is
    refused with the engine's reason (``velocity_limit``). Two runs racing past their
    policy checks are so serialized here: the second sees the first's refund.
    """
    flagged = bool((state.get("screen") or {}).get("flagged"))

    def guard(tx: Tx) -> None:
        ctx.refunds.lock(tx, signed.plan.tenant, signed.plan.customer_id)
        verdict = ctx.policy_engine.evaluate_plan(signed.plan.actions, policy_facts(ctx, state, tx), route=signed.plan.route,
                                          injection_flagged=flagged)
        d = verdict.per_action[index]
        if _SEVERITY[d.decision] > _SEVERITY[authorized]:
            code = "velocity_limit" if "velocity_limit" in d.reason_codes else (d.reason_codes or ["plan_not_validated"])[0]
            raise ToolError(code, f"the refund now needs {d.decision}, not {authorized}: a human decides")

    return guard


def _hold_refunds(ctx: SupportContext, state: SupportState, signed: SignedPlan) -> None:
    """Record the plan's refunds as pending while it waits for approval (velocity facts)."""
    thread = str(state.get("thread_id") or signed.plan.thread_id or "")
    refunds = [(i, str(a.args["order_id"]), int(a.args["amount_cents"]))
               for i, a in enumerate(signed.plan.actions) if a.tool == "issue_refund"]
    if thread and refunds:
        ctx.refunds.hold(signed.plan.tenant, thread, signed.hash, signed.plan.customer_id, refunds, ctx.clock())


@traced("policy_check")
def policy_check(state: SupportState, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Evaluate the plan; route to execute, approval or escalation."""
    ctx = runtime.context
    signed = SignedPlan.model_validate(state["plan"])
    verdict = ctx.policy_engine.evaluate_plan(
        signed.plan.actions,
        policy_facts(ctx, state),
        route=state["route"],
        injection_flagged=bool((state.get("screen") or {}).get("flagged")),
    )
    policy = verdict.model_dump(mode="json")
    update: dict[str, Any] = {"policy": policy}
    audit(ctx, state, "policy_decision", {"plan_hash": signed.hash, "policy_version": ctx.policy.version, **policy}, actor="policy")
    new_state = {**state, **update}
    if verdict.overall in ("escalate", "deny"):
        return {**update, "actions": output_actions(new_state), **escalation(*verdict.reason_codes)}
    if verdict.overall == "approve":
        states = ["pending_approval" if d.decision in ("approve", "execute") else "not_run" for d in verdict.per_action]
        audit(ctx, new_state, "approval_requested", {"plan_hash": signed.hash})
        _hold_refunds(ctx, new_state, signed)
        record_status(ctx, new_state, "awaiting_approval", plan_hash=signed.hash)
        # why it waits (velocity_limit) is shown with the run, not only in the checks
        return {**update, "status": "awaiting_approval", "reason_codes": list(verdict.reason_codes),
                "actions": output_actions(new_state, states)}
    return {**update, "actions": output_actions(new_state)}
