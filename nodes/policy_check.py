"""POLICY_CHECK: deterministic rules decide each action's fate (guards/, never a prompt)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from graphs.context import DecidesPlans, PolicyCheckDeps
from graphs.state import SupportState
from guards.policy import PlanDecision, PolicyFacts
from keel.db import Tx
from keel.plan import SignedPlan, idempotency_key
from nodes import blocks
from nodes.blocks import decide
from nodes.common import allowlist, context_of, escalation, injection_flagged, plan_of, ticket_of, traced
from tools.contracts import ToolError
from tools.registry import side_effect_tools

__all__ = ["policy_check", "policy_facts", "decide_plan", "refund_guard", "SUPPORT"]

_SEVERITY = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}


def _refund_actions(state: SupportState) -> tuple[SignedPlan | None, list[int]]:
    """The plan in state and the indexes of its refunds (none: no velocity facts needed)."""
    signed = plan_of(state)
    if signed is None:
        return None, []
    return signed, [i for i, a in enumerate(signed.plan.actions) if a.tool == "issue_refund"]


def _keel_refunds(ctx: DecidesPlans, state: SupportState, tx: Tx | None) -> list[dict[str, Any]]:
    """The customer's other refunds by keel (executed, pending approval), for the velocity rule.

    Read only for a plan that refunds. The run's own holds and the refunds its own plan
    already issued (a resumed or re-decided execution) are left out: the engine counts
    the plan's refunds itself.
    """
    signed, refunds = _refund_actions(state)
    if signed is None or not refunds:
        return []
    ticket = ticket_of(state)
    thread = signed.plan.thread_id or str(state.get("thread_id") or "")
    own = [idempotency_key(thread, signed.hash, i) for i in refunds]
    since = ctx.clock() - ctx.policy.refund.velocity.period
    return ctx.refunds.recent(ticket.tenant, ticket.customer_id, since, exclude_thread=thread, exclude_keys=own, tx=tx)


def policy_facts(ctx: DecidesPlans, state: SupportState, tx: Tx | None = None) -> PolicyFacts:
    """The records and clock the policy judges the plan against (``tx``: read the
    customer's refunds in that transaction)."""
    ticket = ticket_of(state)
    context = context_of(state)
    return PolicyFacts(
        tenant=ticket.tenant,
        customer_id=ticket.customer_id,
        now=ctx.clock(),
        customer=context.customer,
        orders=context.orders_by_id(),
        subscriptions=context.subscriptions_by_id(),
        keel_refunds=_keel_refunds(ctx, state, tx),
    )


def decide_plan(ctx: DecidesPlans, state: SupportState, signed: SignedPlan, tx: Tx | None = None) -> PlanDecision:
    """The policy's verdict on ``signed`` against this run's records, clock and injection
    screen: the one way POLICY_CHECK, a re-check after a reviewer's edit, execution's
    fresh decision and a refund's last check (inside ``tx``) ask the engine."""
    return decide(ctx.policy_engine, signed, policy_facts(ctx, state, tx), flagged=injection_flagged(state))


def refund_guard(ctx: DecidesPlans, state: SupportState, signed: SignedPlan, index: int,
                 authorized: str) -> Callable[[Tx], None]:
    """The refund's last check, for the tool runner to make inside the refund's transaction.

    Under the customer's refund lock it decides the signed plan again on the refunds
    committed by then; if action ``index`` now needs more than ``authorized`` (``execute``
    for a plan that ran without a human, ``approve`` for an approved one), the refund is
    refused with the engine's reason (``velocity_limit``). Two runs racing past their
    policy checks are so serialized here: the second sees the first's refund.
    """

    def guard(tx: Tx) -> None:
        ctx.refunds.lock(tx, signed.plan.tenant, signed.plan.customer_id)
        verdict = decide_plan(ctx, state, signed, tx)
        d = verdict.per_action[index]
        if _SEVERITY[d.decision] > _SEVERITY[authorized]:
            code = "velocity_limit" if "velocity_limit" in d.reason_codes else (d.reason_codes or ["plan_not_validated"])[0]
            raise ToolError(code, f"the refund now needs {d.decision}, not {authorized}: a human decides")

    return guard


def _hold_refunds(ctx: DecidesPlans, state: SupportState, signed: SignedPlan) -> None:
    """Record the plan's refunds as pending while it waits for approval (velocity facts)."""
    thread = str(state.get("thread_id") or signed.plan.thread_id or "")
    refunds = [(i, str(a.args["order_id"]), int(a.args["amount_cents"]))
               for i, a in enumerate(signed.plan.actions) if a.tool == "issue_refund"]
    if thread and refunds:
        ctx.refunds.hold(signed.plan.tenant, thread, signed.hash, signed.plan.customer_id, refunds, ctx.clock())


@traced("policy_check")
def policy_check(state: SupportState, runtime: Runtime[PolicyCheckDeps]) -> dict[str, Any]:
    """Evaluate the plan; route to execute, approval or escalation."""
    ctx = runtime.context
    signed = plan_of(state)
    if signed is None:  # PROPOSE_ACTION routes here only with a plan; a state edited to lose it stops
        return escalation("plan_integrity")
    # the policy gate block (nodes.blocks): audit the verdict, then escalate, wait for approval
    # (holding the plan's refunds for the velocity rule; the reasons shown with the run) or go on
    return blocks.policy_gate(state, ctx, SUPPORT)  # type: ignore[arg-type]


def _run_of(state: SupportState) -> blocks.RunRef:
    ticket = ticket_of(state)
    return blocks.RunRef(tenant=ticket.tenant, owner=ticket.customer_id, subject_id=ticket.id,
                         thread_id=state.get("thread_id"), requester=state.get("requester"),
                         correlation_id=state.get("correlation_id"), route=state.get("route"))


def _refund_guard_for(ctx: DecidesPlans, state: SupportState, signed: SignedPlan, index: int,
                      authorized: str) -> blocks.Guard | None:
    """A refund is decided once more inside its own transaction, under its customer's lock."""
    if signed.plan.actions[index].tool != "issue_refund":
        return None
    return refund_guard(ctx, state, signed, index, authorized)


SUPPORT = blocks.Workflow(
    run_of=_run_of,
    facts=policy_facts,
    allowlist=allowlist,
    side_effect=lambda tool: tool in side_effect_tools(),
    guard_for=_refund_guard_for,
    hold=_hold_refunds,
)
"""The support workflow as the building blocks (policy gate, approval, execute) see it."""
