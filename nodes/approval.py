"""Human approval: the run pauses with ``interrupt()`` until a reviewer decides.

LangGraph re-runs this node from its first line on every resume, so everything before
``interrupt()`` is pure (it only builds the request from state). A refused resume
(stale hash, a role the pack's ``approver_roles`` does not list, the requester approving
their own run, an upward edit) does not end the run: the node asks again, with the error
in the new interrupt's value. The rules are read from the policy pack in force.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from graphs.context import SupportContext
from graphs.state import SupportState
from guards.approvals import ApprovalError, apply_edits, check_resume, decided_at
from guards.injection import reviewer_view
from keel.plan import Plan, SignedPlan, sign_plan
from nodes.common import audit, escalation, output_actions, record_status, traced
from nodes.policy_check import policy_facts

__all__ = ["await_approval", "approval_request"]


def approval_request(state: SupportState) -> dict[str, Any]:
    """The interrupt's value: plan, hash, policy checks and evidence (batch contract)."""
    signed = SignedPlan.model_validate(state["plan"])
    per = (state.get("policy") or {}).get("per_action") or []
    checks = [
        {"action_index": i, "tool": signed.plan.actions[i].tool, **c}
        for i, d in enumerate(per)
        for c in d.get("checks", [])
    ]
    return {
        "type": "plan_approval",
        "thread_id": state.get("thread_id"),
        "tenant": signed.plan.tenant,
        "ticket_id": signed.plan.ticket_id,
        "customer_id": signed.plan.customer_id,
        "requester": state.get("requester"),
        "route": state.get("route"),
        "plan": output_actions(state, ["pending_approval"] * len(signed.plan.actions)),
        "plan_hash": signed.hash,
        "policy_version": signed.plan.policy_version,
        "policy_checks": checks,
        "evidence": state.get("evidence") or [],
        # the injection screen's verdict on the ticket and retrieved text, with its spans
        "injection": reviewer_view(state.get("screen")),
        "resume": {"decision": "approve | reject", "plan_hash": signed.hash, "reviewer": "USER_ID", "reason": "TEXT",
                   "edits": "[{index, args}] (optional, only downward)"},
    }


@traced("await_approval")
def await_approval(state: SupportState, config: RunnableConfig, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Wait for a valid decision, then approve (possibly an edited plan) or reject."""
    ctx = runtime.context
    request = approval_request(state)
    role_of = ctx.role_of
    error: dict[str, str] | None = None
    while True:
        value = interrupt(request if error is None else {**request, "error": error})
        try:
            decision = check_resume(value, request, ctx.policy.approvals, role_of)
            break
        except ApprovalError as e:
            error = {"code": e.code, "message": e.message}

    # the rest of the run belongs to the request that resumed it: its correlation id
    # tags every later log line and audit row
    cid = ((config or {}).get("configurable") or {}).get("correlation_id")
    if cid:
        state = {**state, "correlation_id": str(cid)}
    approval = {
        "decision": decision.decision,
        "reviewer": decision.reviewer,
        "reviewer_role": decision.reviewer_role,
        # False when the resume came straight to the graph (langgraph dev, Studio) naming a
        # reviewer keel's directory does not know; keel's CLI and API always verify
        "reviewer_verified": decision.reviewer_role is not None or role_of(request["tenant"], decision.reviewer) is not None,
        "reason": decision.reason,
        "plan_hash": request["plan_hash"],
        "edited": bool(decision.edits),
        "at": decided_at(),
    }
    if decision.decision == "reject":
        audit(ctx, state, "approval", approval, actor=decision.reviewer)
        return {"approval": approval, "status": "rejected", "reason_codes": ["rejected_by_reviewer"],
                "actions": output_actions(state), "correlation_id": state.get("correlation_id")}

    signed = SignedPlan.model_validate(state["plan"])
    update: dict[str, Any] = {"status": "running", "correlation_id": state.get("correlation_id")}
    if decision.edits:
        edited = Plan.model_validate({**signed.plan.model_dump(), "actions": apply_edits(signed.plan.actions, decision.edits)})
        signed = sign_plan(edited, ctx.signing_key)
        new_state = {**state, "plan": signed.model_dump(mode="json")}
        verdict = ctx.policy_engine.evaluate_plan(
            signed.plan.actions, policy_facts(ctx, state), route=state["route"],
            injection_flagged=bool((state.get("screen") or {}).get("flagged")),
        )
        update.update(plan=signed.model_dump(mode="json"), policy=verdict.model_dump(mode="json"))
        new_state.update(update)
        audit(ctx, new_state, "policy_decision", {"plan_hash": signed.hash, "revalidated_after_edit": True,
                                                 **verdict.model_dump(mode="json")}, actor="policy")
        if verdict.overall in ("escalate", "deny"):
            approval["plan_hash"] = signed.hash
            audit(ctx, new_state, "approval", approval, actor=decision.reviewer)
            return {**update, "approval": approval, "actions": output_actions(new_state), **escalation(*verdict.reason_codes)}
        approval["plan_hash"] = signed.hash
    audit(ctx, state, "approval", approval, actor=decision.reviewer)
    record_status(ctx, state, "running", plan_hash=approval["plan_hash"])
    return {**update, "approval": approval}
