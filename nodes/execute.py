"""EXECUTE_ACTION: run a validated (and, where required, approved) plan, exactly once.

Execution re-checks what it is handed instead of trusting the state: the plan's hash
and HMAC must match its content, an approval must name that same hash, and each side
effect carries an idempotency key derived from (thread, plan hash, action index), so a
re-run after a crash or a resume returns the ledger's first result instead of acting
again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from graphs.state import SupportState
from guards.budgets import charge_tool_call, check
from keel.plan import PlanIntegrityError, idempotency_key, verify_plan
from keel.types import SIDE_EFFECT_TOOLS
from nodes.common import audit, escalation, output_actions, tool_context, traced

if TYPE_CHECKING:
    from keel.runtime import Runtime

__all__ = ["execute_action", "ToolFailure"]


class ToolFailure(RuntimeError):
    """A tool kept failing transiently past its retries: the run stops here, resumable.

    The checkpoint before this node survives, so a worker (or an admin's retry of a
    dead-lettered run) re-enters EXECUTE_ACTION; the ledger keeps completed actions
    from running twice.
    """


@traced("execute_action")
def execute_action(state: SupportState, *, rt: "Runtime") -> dict[str, Any]:
    """Execute every action the policy (and reviewer) allowed."""
    try:
        signed = verify_plan(state["plan"], rt.signing_key())
    except (PlanIntegrityError, ValueError) as e:
        audit(rt, state, "policy_decision", {"refused": "plan_integrity", "detail": str(e)}, actor="executor")
        return {"actions": output_actions(state), **escalation("plan_integrity")}
    policy = state.get("policy") or {}
    per = policy.get("per_action") or []
    if len(per) != len(signed.plan.actions):
        return {"actions": output_actions(state), **escalation("plan_integrity")}
    if policy.get("overall") == "approve":
        approval = state.get("approval") or {}
        if approval.get("decision") != "approve" or approval.get("plan_hash") != signed.hash:
            audit(rt, state, "policy_decision", {"refused": "approval_missing", "plan_hash": signed.hash}, actor="executor")
            return {"actions": output_actions(state), **escalation("approval_missing")}
    elif policy.get("overall") != "execute":
        return {"actions": output_actions(state), **escalation("plan_not_validated")}

    budget = dict(state.get("budget") or {})
    if state.get("approval"):
        # the wall-clock cap measures the run's own work; days spent waiting for a human
        # are not run time, so the clock restarts when the approved plan executes
        budget["started_at"] = datetime.now(timezone.utc).isoformat()
    results: list[dict[str, Any]] = []
    states: list[str] = []
    for i, action in enumerate(signed.plan.actions):
        if per[i]["decision"] not in ("execute", "approve"):
            states.append("not_run")
            continue
        key = idempotency_key(signed.plan.thread_id or state.get("thread_id", ""), signed.hash, i) \
            if action.tool in SIDE_EFFECT_TOOLS else None
        res = rt.tools.call(action.tool, action.args, tool_context(rt, state, key))
        budget = charge_tool_call(budget, max(0, res.attempts - 1))
        audit(rt, state, "tool_call", {"index": i, "tool": action.tool, "args": action.args, "ok": res.ok,
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
        if check(budget, rt.caps, datetime.now(timezone.utc)):
            states += ["not_run"] * (len(signed.plan.actions) - len(states))
            return {"budget": budget, "results": results, "actions": output_actions(state, states),
                    **escalation("budget_exceeded")}
    return {"budget": budget, "results": results, "actions": output_actions(state, states)}
