"""EXECUTE_ACTION: run a validated (and, where required, approved) plan, exactly once.

Execution re-checks what it is handed instead of trusting the state: the plan's hash
and HMAC must match its content and its tenant and customer the ticket's; the policy
decides the signed plan again (the stricter of that and the stored verdict wins); an
approval must name that same hash and have been recorded by the approval node in the
audit log; and each side effect carries an idempotency key derived from (thread, plan
hash, action index), so a re-run after a crash or a resume returns the ledger's first
result instead of acting again. A refund is decided once more inside its own transaction,
under its customer's lock (``refund_guard``), so two runs racing cannot both slip under
the refund velocity limits.
"""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from langgraph.runtime import Runtime

from graphs.context import SupportContext
from graphs.state import SupportState
from guards.budgets import charge_tool_call, check
from keel.plan import PlanIntegrityError, SignedPlan, idempotency_key, verify_plan
from keel.types import SIDE_EFFECT_TOOLS
from nodes.common import attempt_budget, audit, escalation, output_actions, tool_context, traced
from nodes.policy_check import policy_facts, refund_guard

__all__ = ["execute_action", "ToolFailure"]


class ToolFailure(RuntimeError):
    """A tool kept failing transiently past its retries: the run stops here, resumable.

    The checkpoint before this node survives, so a worker (or an admin's retry of a
    dead-lettered run) re-enters EXECUTE_ACTION; the ledger keeps completed actions
    from running twice.
    """

    transient = True
    """Workers retry a run that failed with this (backoff and jitter, then dead letter)."""


_SEVERITY = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}


def _approved(ctx: SupportContext, state: SupportState, signed: SignedPlan) -> bool:
    """An approval of exactly this plan: in state, and recorded by the approval node.

    The approval in state is only a checkpoint value; the approval node also writes an
    ``approval`` row to the tenant's hash-chained audit log before the run moves on, so
    an approval forged in the checkpoint store (naming the right hash) is not enough.
    """
    approval = state.get("approval") or {}
    if approval.get("decision") != "approve" or approval.get("plan_hash") != signed.hash:
        return False
    threads = {t for t in (state.get("thread_id"), signed.plan.thread_id) if t}
    return any(
        row.kind == "approval" and row.data.get("decision") == "approve" and row.data.get("plan_hash") == signed.hash
        for t in threads for row in ctx.audit.list(signed.plan.tenant, t)
    )


@traced("execute_action")
def execute_action(state: SupportState, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Execute every action the policy (and reviewer) allowed."""
    ctx = runtime.context
    try:
        signed = verify_plan(state["plan"], ctx.signing_key)
    except (PlanIntegrityError, ValueError) as e:
        audit(ctx, state, "policy_decision", {"refused": "plan_integrity", "detail": str(e)}, actor="executor")
        return {"actions": output_actions(state), **escalation("plan_integrity")}
    policy = state.get("policy") or {}
    per = policy.get("per_action") or []
    ticket = state.get("ticket") or {}
    if len(per) != len(signed.plan.actions) or (ticket.get("tenant"), ticket.get("customer_id")) != (
        signed.plan.tenant, signed.plan.customer_id):
        return {"actions": output_actions(state), **escalation("plan_integrity")}
    # the verdict in state is not signed: decide again from the signed plan and keep the
    # stricter of the two, so an edited verdict can neither skip an approval nor a denial
    fresh = ctx.policy_engine.evaluate_plan(signed.plan.actions, policy_facts(ctx, state), route=signed.plan.route,
                                    injection_flagged=bool((state.get("screen") or {}).get("flagged")))
    decisions = [max(str(per[i].get("decision")), d.decision, key=lambda x: _SEVERITY.get(x, 99))
                 for i, d in enumerate(fresh.per_action)]
    overall = max([policy.get("overall"), fresh.overall, *decisions], key=lambda x: _SEVERITY.get(x, 99))
    if overall in ("deny", "escalate") or overall not in _SEVERITY:
        audit(ctx, state, "policy_decision", {"refused": "plan_not_validated", "plan_hash": signed.hash}, actor="executor")
        return {"actions": output_actions(state), **escalation(*(fresh.reason_codes or ["plan_not_validated"]))}
    if overall == "approve" and not _approved(ctx, state, signed):
        audit(ctx, state, "policy_decision", {"refused": "approval_missing", "plan_hash": signed.hash}, actor="executor")
        return {"actions": output_actions(state), **escalation("approval_missing", *fresh.reason_codes)}

    budget = dict(state.get("budget") or {})
    if state.get("approval"):
        # the wall-clock cap measures the run's own work; days spent waiting for a human
        # are not run time, so the clock restarts when the approved plan executes
        budget["started_at"] = datetime.now(UTC).isoformat()
    results: list[dict[str, Any]] = []
    states: list[str] = []
    for i, action in enumerate(signed.plan.actions):
        if decisions[i] not in ("execute", "approve"):
            states.append("not_run")
            continue
        key = idempotency_key(signed.plan.thread_id or state.get("thread_id", ""), signed.hash, i) \
            if action.tool in SIDE_EFFECT_TOOLS else None
        call = tool_context(ctx, state, key)
        if action.tool == "issue_refund":  # decided again under the customer's lock, in the refund's transaction
            authorized = "approve" if overall == "approve" else "execute"
            call = call.model_copy(update={"guard": refund_guard(ctx, state, signed, i, authorized)})
        res = ctx.tools.call(action.tool, action.args, call)
        budget = charge_tool_call(budget, max(0, res.attempts - 1))
        audit(ctx, state, "tool_call", {"index": i, "tool": action.tool, "args": action.args, "ok": res.ok,
                                       "error": res.error_code, "replayed": res.replayed, "attempts": res.attempts,
                                       "idempotency_key": key}, actor="executor")
        if not res.ok:
            if res.error_code in ("transient_failure", "timeout"):
                raise ToolFailure(f"{action.tool}: {res.error_code}")
            states.append("not_run")
            states += ["not_run"] * (len(signed.plan.actions) - len(states))
            return {"budget": budget, "results": results, "actions": output_actions(state, states),
                    **escalation(res.error_code or "tool_error")}
        results.append({"index": i, "tool": action.tool, "output": res.output, "replayed": res.replayed,
                        "idempotency_key": key})
        states.append("executed")
        if check(attempt_budget(budget), ctx.caps, datetime.now(UTC)):
            states += ["not_run"] * (len(signed.plan.actions) - len(states))
            return {"budget": budget, "results": results, "actions": output_actions(state, states),
                    **escalation("budget_exceeded")}
    return {"budget": budget, "results": results, "actions": output_actions(state, states)}
