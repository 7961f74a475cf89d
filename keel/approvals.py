"""Human approval of a plan: the one set of rules every resume path goes through.

The rules themselves are data: the ``[approvals]`` section of the policy pack in force
(:class:`guards.policy.ApprovalPolicy`: approver roles, separation of duties, downward-only
edits). This module is the one place that applies them. The graph's approval node, the
CLI and the HTTP API all call :func:`check_resume`; the authenticated paths (CLI, API)
call :func:`validate_resume` first, which also binds the reviewer to the authenticated
caller and checks role and tenant, so a thread stays waiting when a resume is refused.
:func:`decider_refusal` answers "may this caller decide?" for the API's pre-checks and
for the listings. There is no side door and no role list outside the pack.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError

from keel.types import ProposedAction, StrictModel

if TYPE_CHECKING:
    from guards.policy import ApprovalPolicy
    from keel.principals import Principal
    from keel.runtime import Runtime

__all__ = [
    "ApprovalError",
    "ActionEdit",
    "ResumePayload",
    "approval_rules",
    "decider_refusal",
    "check_resume",
    "apply_edits",
    "pending_approval",
    "validate_resume",
]


class ApprovalError(Exception):
    """A resume was refused; the thread keeps waiting."""

    def __init__(self, code: str, http_status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        """Machine-readable reason (``stale_plan``, ``separation_of_duties``, …)."""
        self.http_status = http_status
        """Status an HTTP endpoint answers with."""
        self.message = message
        """Short, safe explanation."""


class ActionEdit(StrictModel):
    """A reviewer's change to one action's arguments (downward only, unless the pack allows more)."""

    index: int = Field(ge=0, le=7)
    """Position of the action in the plan."""
    args: dict[str, Any]
    """The changed arguments (merged over the originals)."""


class ResumePayload(StrictModel):
    """What resuming an approval interrupt takes (batch contract)."""

    decision: Literal["approve", "reject"]
    """Approve (then execute) or reject (the run ends ``rejected``)."""
    plan_hash: str = Field(min_length=64, max_length=64)
    """Hash of the plan the reviewer saw; a changed plan cannot be approved."""
    reviewer: str = Field(min_length=1, max_length=128)
    """Who decides; never the requester while the pack separates duties."""
    reason: str = Field(default="", max_length=2_000)
    """Why, for the audit trail."""
    edits: list[ActionEdit] = Field(default_factory=list, max_length=8)
    """Amount changes (downward only under ``edits_only_downward``); the edited plan is validated again."""
    reviewer_role: str | None = None
    """Set by authenticated entry points (CLI, API) from the caller's principal."""


def approval_rules(rt: "Runtime") -> "ApprovalPolicy":
    """The ``[approvals]`` rules of the policy pack in force (``KEEL_POLICY_FILE``)."""
    return rt.policy.approvals


def decider_refusal(
    rules: "ApprovalPolicy", *, role: str | None, reviewer: str, requester: str | None
) -> ApprovalError | None:
    """Why ``reviewer`` (with ``role``) may not decide a run ``requester`` started, or None.

    ``role`` None means the reviewer's role is unknown (a resume straight to the graph,
    naming a user keel's directory does not know): only separation of duties is checked.
    """
    if role is not None and not rules.role_may_decide(role):
        allowed = " or ".join(rules.approver_roles)
        return ApprovalError(
            "not_an_approver", 403,
            f"role {role!r} may not approve or reject: the policy pack lets only {allowed} of the tenant decide",
        )
    if rules.conflict_of_duties(requester, reviewer):
        return ApprovalError("separation_of_duties", 403, "the requester of a run cannot approve or reject it")
    return None


def check_resume(
    value: Any,
    request: dict[str, Any],
    rules: "ApprovalPolicy",
    role_of: Callable[[str, str], str | None] | None = None,
) -> ResumePayload:
    """Validate a resume value against the pending approval request under ``rules``, or raise.

    ``role_of(tenant, user) -> role | None`` looks a reviewer up where a directory exists.
    """
    from guards.policy import check_edit

    try:
        payload = ResumePayload.model_validate(value)
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "payload" for err in e.errors()})
        raise ApprovalError("invalid_resume", 422, f"invalid resume payload: {', '.join(fields)}") from None
    if payload.plan_hash != request["plan_hash"]:
        raise ApprovalError("stale_plan", 409, "the plan changed since it was shown; review the current plan")
    role = payload.reviewer_role
    if role is None and role_of is not None:
        role = role_of(request["tenant"], payload.reviewer)
    refused = decider_refusal(rules, role=role, reviewer=payload.reviewer, requester=request.get("requester"))
    if refused is not None:
        raise refused
    if payload.decision == "approve" and payload.edits:
        actions = request["plan"]
        for edit in payload.edits:
            if edit.index >= len(actions):
                raise ApprovalError("edit_not_allowed", 422, f"no action at index {edit.index}")
            original = ProposedAction(tool=actions[edit.index]["tool"], args=actions[edit.index]["args"])
            problems = check_edit(original, {**original.args, **edit.args}, rules)
            if problems:
                allowed = "lower" if rules.edits_only_downward else "change"
                raise ApprovalError(problems[0], 422, f"edits may only {allowed} amounts; the plan is unchanged")
    return payload


def apply_edits(actions: list[ProposedAction], edits: list[ActionEdit]) -> list[ProposedAction]:
    """The plan's actions with the reviewer's edits merged in."""
    out = list(actions)
    for e in edits:
        out[e.index] = ProposedAction(tool=out[e.index].tool, args={**out[e.index].args, **e.args})
    return out


def pending_approval(rt: "Runtime", thread_id: str, graph_id: str = "support") -> dict[str, Any] | None:
    """The approval request a thread is waiting on, or None."""
    snap = rt.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
    for intr in getattr(snap, "interrupts", ()) or ():
        value = intr.value
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


def validate_resume(rt: "Runtime", thread_id: str, principal: "Principal", payload: dict[str, Any]) -> dict[str, Any]:
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


def decided_at() -> str:
    """Timestamp for an approval record."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
