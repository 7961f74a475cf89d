"""Approvals on a runtime: the plan a thread waits on, and an authenticated caller's resume.

The rules themselves are pure and live in :mod:`guards.approvals` (read from the policy
pack's ``[approvals]``). What needs keel's stores is here, shared by the CLI
(``keel approvals|approve|reject``) and the HTTP API (``/approvals``, ``command.resume``):
reading the pending approval request from the thread's checkpoint, and
:func:`validate_resume`, which binds the reviewer to the authenticated caller, checks
role and tenant, and then applies :func:`guards.approvals.check_resume`, so a refused
resume leaves the thread waiting.
"""

from __future__ import annotations

from typing import Any

from engine.runtime import Runtime
from guards.approvals import ApprovalError, check_resume, decider_refusal
from guards.pack import ApprovalPolicy
from keel.principals import Principal

__all__ = ["approval_rules", "pending_approval", "validate_resume"]


def approval_rules(rt: Runtime) -> ApprovalPolicy:
    """The ``[approvals]`` rules of the policy pack in force (``KEEL_POLICY_FILE``)."""
    return rt.policy.approvals


def pending_approval(rt: Runtime, thread_id: str, graph_id: str = "support") -> dict[str, Any] | None:
    """The approval request a thread is waiting on, or None."""
    snap = rt.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
    for intr in getattr(snap, "interrupts", ()) or ():
        value = intr.value
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


def validate_resume(rt: Runtime, thread_id: str, principal: Principal, payload: dict[str, Any]) -> dict[str, Any]:
    """Check an authenticated caller's resume; return the value to resume the graph with."""
    request = pending_approval(rt, thread_id)
    if request is None or request.get("tenant") != principal.tenant:
        # another tenant's thread looks exactly like a missing one
        raise ApprovalError("not_pending", 404, "no approval is pending on this thread")
    rules = approval_rules(rt)
    refused = decider_refusal(rules, role=principal.role, reviewer=principal.user_id, requester=request.get("requester"))
    if refused is not None:
        raise refused
    named = payload.get("reviewer") if isinstance(payload, dict) else None
    if named is not None and named != principal.user_id:
        raise ApprovalError("reviewer_mismatch", 403, "the reviewer is the authenticated caller; naming someone else is refused")
    value = {**(payload if isinstance(payload, dict) else {}), "reviewer": principal.user_id, "reviewer_role": principal.role}
    check_resume(value, request, rules)
    return value
