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
from engine.supply import supply_parts
from engine.tracing import approval_span
from guards.approvals import ApprovalError, check_resume, decider_refusal
from guards.pack import ApprovalPolicy
from keel.keys import KeyringError, SigningKeyRetired, UnknownSigningKey
from keel.plan import PlanIntegrityError, verify_plan
from keel.principals import Principal
from tools.registry import preview_actions
from tools.supply import SUPPLY_TOOLS

__all__ = ["approval_rules", "pending_approval", "preview_plan", "validate_resume", "interrupt_resume_refusal"]


def approval_rules(rt: Runtime, graph_id: str = "support") -> ApprovalPolicy:
    """The ``[approvals]`` rules of the policy pack in force for graph ``graph_id``
    (support: ``KEEL_POLICY_FILE``; supply: ``supply-v1``)."""
    if graph_id == "supply":
        return supply_parts(rt).pack.approvals
    return rt.policy.approvals


def pending_approval(rt: Runtime, thread_id: str, graph_id: str = "support") -> dict[str, Any] | None:
    """The approval request a thread is waiting on, or None."""
    snap = rt.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
    for intr in getattr(snap, "interrupts", ()) or ():
        value = intr.value
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


def preview_plan(rt: Runtime, tenant: str, plan: list[dict[str, Any]], graph_id: str = "support") -> list[dict[str, Any]]:
    """For a reviewer: each action's records before → after, as its tool's declaration previews
    them (:func:`tools.registry.preview_actions`), read from the tenant's back office now
    (the supply graph's from its own store and tools)."""
    if graph_id == "supply":
        return preview_actions(supply_parts(rt).store, tenant, plan, registry=SUPPLY_TOOLS)
    return preview_actions(rt.backoffice, tenant, plan)


def validate_resume(rt: Runtime, thread_id: str, principal: Principal, payload: dict[str, Any],
                    graph_id: str = "support") -> dict[str, Any]:
    """Check an authenticated caller's resume; return the value to resume the graph with.

    Traced as ``approval.decide`` (``keel.approval.*``; the wait since the approval was
    requested goes to the approval wait histogram when the decision is accepted)."""
    snap = rt.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
    with approval_span(rt, principal.tenant, thread_id, graph_id, payload, getattr(snap, "created_at", None)) as span:
        span.set_attribute("keel.approval.reviewer_role", principal.role)
        value = _validate_resume(rt, thread_id, principal, payload, graph_id)
        if value.get("decision") == "approve":
            _refuse_untrusted_key(rt, (getattr(snap, "values", None) or {}).get("plan"))
        return value


def _refuse_untrusted_key(rt: Runtime, plan: Any) -> None:
    """Refuse approving a plan whose signing key was retired (or is unknown): it would never
    execute. The thread keeps waiting; a reviewer may still reject it."""
    if plan is None:
        return
    try:
        verify_plan(plan, rt.keyring)
    except (SigningKeyRetired, UnknownSigningKey) as e:
        raise ApprovalError(e.code, 409, f"{e}; the plan cannot be approved, only rejected") from None
    except KeyringError as e:  # this server cannot read the key (its key-encryption key is missing)
        raise ApprovalError("keyring_unavailable", 503, str(e)) from None
    except (PlanIntegrityError, ValueError):
        pass  # a tampered plan: execution refuses it (plan_integrity), as before


def _validate_resume(rt: Runtime, thread_id: str, principal: Principal, payload: dict[str, Any],
                     graph_id: str = "support") -> dict[str, Any]:
    request = pending_approval(rt, thread_id, graph_id)
    if request is None or request.get("tenant") != principal.tenant:
        # another tenant's thread looks exactly like a missing one
        raise ApprovalError("not_pending", 404, "no approval is pending on this thread")
    rules = approval_rules(rt, graph_id)
    refused = decider_refusal(rules, role=principal.role, reviewer=principal.user_id, requester=request.get("requester"))
    if refused is not None:
        raise refused
    named = payload.get("reviewer") if isinstance(payload, dict) else None
    if named is not None and named != principal.user_id:
        raise ApprovalError("reviewer_mismatch", 403, "the reviewer is the authenticated caller; naming someone else is refused")
    value = {**(payload if isinstance(payload, dict) else {}), "reviewer": principal.user_id, "reviewer_role": principal.role}
    check_resume(value, request, rules)
    return value


def interrupt_resume_refusal(rt: Runtime, principal: Principal, requester: str | None) -> ApprovalError | None:
    """Why ``principal`` may not answer a plain ``interrupt(...)`` of a graph keel did not
    write (``command={"resume": …}``), or None: the run's requester may, and so may any
    user whose role the pack's ``[approvals] approver_roles`` names (same tenant: the
    caller only sees its own tenant's threads). A plan approval is decided through
    :func:`validate_resume` instead."""
    if requester is not None and principal.user_id == requester:
        return None
    if approval_rules(rt).role_may_decide(principal.role):
        return None
    return ApprovalError("forbidden", 403, "only the run's requester or an approver may resume this thread")
