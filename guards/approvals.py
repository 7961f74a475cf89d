"""The approval rules: who may decide a paused plan, and what a reviewer may change.

The rules themselves are data: the ``[approvals]`` section of the policy pack in force
(:class:`guards.pack.ApprovalPolicy`: approver roles, separation of duties, downward-only
edits). This module is the one place that applies them, purely (no store, no graph). The
graph's approval node, the CLI and the HTTP API all call :func:`check_resume`; the
authenticated paths (CLI, API) go through ``engine.approvals.validate_resume`` first,
which also binds the reviewer to the authenticated caller and checks role and tenant, so a
thread stays waiting when a resume is refused. :func:`decider_refusal` answers "may this
caller decide?" for the API's pre-checks and for the listings. There is no side door and
no role list outside the pack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, UTC
from typing import Any, Literal

from pydantic import Field, ValidationError

from guards.pack import ApprovalPolicy
from keel.errors import KeelError
from keel.types import ProposedAction, StrictModel

__all__ = [
    "ApprovalError",
    "ActionEdit",
    "ResumePayload",
    "decider_refusal",
    "check_resume",
    "apply_edits",
    "decided_at",
    "check_reviewer",
    "check_edit",
    "apply_edit",
]


class ApprovalError(KeelError):
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


def decider_refusal(
    rules: ApprovalPolicy, *, role: str | None, reviewer: str, requester: str | None
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
    rules: ApprovalPolicy,
    role_of: Callable[[str, str], str | None] | None = None,
) -> ResumePayload:
    """Validate a resume value against the pending approval request under ``rules``, or raise.

    ``role_of(tenant, user) -> role | None`` looks a reviewer up where a directory exists.
    """
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


def decided_at() -> str:
    """Timestamp for an approval record."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_reviewer(
    requester: str,
    reviewer: str,
    reviewer_role: str,
    reviewer_tenant: str,
    run_tenant: str,
    approvals: ApprovalPolicy,
) -> list[str]:
    """Reason codes why ``reviewer`` may not approve or reject this run (empty: may).

    ``not_approver``: role not in the pack's approver roles. ``wrong_tenant``: reviewer of
    another tenant. ``separation_of_duties``: the reviewer started the run (or is unnamed),
    when the pack separates duties.
    """
    codes: list[str] = []
    if not approvals.role_may_decide(reviewer_role):
        codes.append("not_approver")
    if not reviewer_tenant or reviewer_tenant != run_tenant:
        codes.append("wrong_tenant")
    if approvals.conflict_of_duties(requester, reviewer):
        codes.append("separation_of_duties")
    return codes


def check_edit(
    original: ProposedAction, edited_args: Mapping[str, Any], approvals: ApprovalPolicy
) -> list[str]:
    """Reason codes why a reviewer's edit is refused (empty: allowed).

    ``edited_args`` holds the changed arguments (a full argument dict works too). Only
    amounts (``*_cents`` integers) may change, and only downward to a positive value; a
    new key, a changed tool (``tool`` key) or any other changed field is
    ``edit_not_allowed``; a larger amount is ``edit_raises_amount`` unless the pack allows
    upward edits (``edits_only_downward = false``). The edited action must still be
    re-evaluated by the engine: a changed amount can change its tier.
    """
    codes: list[str] = []

    def add(code: str) -> None:
        if code not in codes:
            codes.append(code)

    # a pack may list, per tool, the fields a reviewer may lower (supply-v1's
    # [approvals.editable]); without such a list only amounts (``*_cents``) may change
    listed: Mapping[str, Any] | None = getattr(approvals, "editable", None)
    for key, new in edited_args.items():
        if key not in original.args:
            add("edit_not_allowed")
            continue
        old = original.args[key]
        if new == old and type(new) is type(old):
            continue
        may = key in listed.get(original.tool, ()) if listed is not None else key.endswith("_cents")
        if not (may and _is_int(old) and _is_int(new)) or new <= 0:
            add("edit_not_allowed")
        elif new > old and approvals.edits_only_downward:
            add("edit_raises_amount")
    return codes


def apply_edit(original: ProposedAction, edited_args: Mapping[str, Any]) -> ProposedAction:
    """The action with the reviewer's changes merged in (call :func:`check_edit` first)."""
    return ProposedAction(tool=original.tool, args={**original.args, **edited_args})
