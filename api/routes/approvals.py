"""Approvals: pending plans of the caller's tenant, and the decisions on them.

Every decision names the plan hash the reviewer saw and goes through
:func:`api.services.submit_run`, i.e. :func:`engine.approvals.validate_resume`: the policy
pack's ``[approvals]`` rules decide who may approve (``approver_roles``), whether the run's
requester may (``separation_of_duties``) and which edits are allowed
(``edits_only_downward``), only for the current plan. Repeating the same decision returns
the original run (idempotent); a different decision on an already decided plan is 409.

Every member of the tenant sees its pending approvals; each one says whether the caller
may decide it (``can_decide``) and, if not, why (``refusal``), by the same rules.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query

from api.deps import ApiState, request_correlation_id, get_principal, get_state
from api.errors import http_error
from api.models import MAX_OFFSET, ApprovalDetail, ApprovalPage, ApproveBody, DecisionOut, EditBody, RejectBody, returns
from api.models import KeelJSONResponse as JSONResponse  # non-finite floats read back as null
from api.services import await_run, run_out, submit_run, thread_or_404, wait_result
from engine.approvals import approval_rules, pending_approval, preview_plan
from engine.review import review_desk
from guards.approvals import decider_refusal
from guards.pack import ApprovalPolicy
from keel.principals import Principal

router = APIRouter(tags=["approvals"])


def _pending(st: ApiState, th: dict[str, Any]) -> dict[str, Any] | None:
    if not th.get("graph_id") or th["status"] != "interrupted":
        return None
    return pending_approval(st.runtime, th["thread_id"], th["graph_id"])


def _recorded(th: dict[str, Any]) -> dict[str, Any] | None:
    """The plan approval the worker recorded on the thread row when its run paused (no
    checkpoint load); None when nothing was recorded (the caller reads the checkpoint)."""
    raw = th.get("interrupts")
    if not raw or not th.get("graph_id"):
        return None
    for intr in json.loads(raw) if isinstance(raw, str) else raw:
        value = intr.get("value") if isinstance(intr, dict) else None
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


def _summary(rules: ApprovalPolicy, p: Principal, th: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    requester = req.get("requester") or th.get("requester")
    refused = decider_refusal(rules, role=p.role, reviewer=p.user_id, requester=requester)
    return {
        "thread_id": th["thread_id"],
        "tenant": th["tenant"],
        "requester": requester,
        "ticket_id": req.get("ticket_id"),
        "route": req.get("route"),
        "plan_hash": req.get("plan_hash"),
        "plan": req.get("plan"),
        "waiting_since": th["updated_at"],
        "can_decide": refused is None,
        "refusal": None if refused is None else {"code": refused.code, "detail": refused.message},
    }


def _with_deadlines(st: ApiState, tenant: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each item's ``deadline`` and ``assignee_group`` (the pack's ``[approvals]``, from when
    the plan began waiting); a plan parked before deadlines existed gets its row now."""
    desk = review_desk(st.runtime)
    known = desk.deadlines.for_threads(tenant, [i["thread_id"] for i in items])
    for item in items:
        if not item.get("plan_hash"):
            continue
        d = known.get(item["thread_id"])
        if d is None or d.plan_hash != item["plan_hash"]:
            since = datetime.fromisoformat(str(item["waiting_since"]).replace("Z", "+00:00"))
            d = desk.deadlines.register(tenant, item["thread_id"], st.queue.get_thread(tenant, item["thread_id"])
                                        ["graph_id"], item["plan_hash"], approval_rules(st.runtime), now=since)
        item.update(deadline=d.deadline, assignee_group=d.assignee_group, on_deadline=d.on_deadline)
    return items


@router.get("/approvals", summary="Pending approvals", **returns(ApprovalPage))
def list_approvals(limit: int = Query(20, ge=1, le=200), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                   st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> JSONResponse:
    """Plans of the caller's tenant waiting for a decision, oldest first, paged."""
    total = st.queue.count_threads(p.tenant, "interrupted")
    rows = st.queue.search_threads(p.tenant, status="interrupted", limit=limit, offset=offset,
                                   sort_by="updated_at", sort_order="asc")
    rules = approval_rules(st.runtime)
    items = []
    for th in rows:
        req = _recorded(th)
        if req is None:  # a thread parked before keel recorded interrupts on the thread row
            req = _pending(st, th)
        if req is not None:
            items.append(_summary(approval_rules(st.runtime, th["graph_id"]), p, th, req))
    _with_deadlines(st, p.tenant, items)
    nxt = offset + limit if offset + limit < total else None
    # plain JSON values already: skip FastAPI's generic encoder (most of a page's CPU time)
    return JSONResponse({"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": nxt,
                         "rules": rules.model_dump(mode="json")})


@router.get("/approvals/{thread_id}", summary="One pending approval", **returns(ApprovalDetail))
def get_approval(thread_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Plan, plan hash, policy checks, evidence and a preview of the records each action changes
    (before → after, from each tool's declaration)."""
    th = thread_or_404(st.queue, p, thread_id)
    req = _pending(st, th)
    if req is None:
        raise http_error(404, "not_pending", "no approval is pending on this thread")
    return {
        **_with_deadlines(st, p.tenant, [_summary(approval_rules(st.runtime, th["graph_id"]), p, th, req)])[0],
        "policy_version": req.get("policy_version"),
        "policy_checks": req.get("policy_checks", []),
        "evidence": req.get("evidence", []),
        "preview": req.get("preview") or preview_plan(st.runtime, p.tenant, req.get("plan") or [], th["graph_id"]),
        "error": req.get("error"),
        "request": req,
    }


async def _decide(st: ApiState, p: Principal, thread_id: str, resume: dict[str, Any], cid: str, wait: bool) -> dict[str, Any]:
    def submit() -> tuple[dict[str, Any], bool]:
        th = thread_or_404(st.queue, p, thread_id)
        if not th.get("graph_id"):
            raise http_error(404, "not_pending", "no approval is pending on this thread")
        return submit_run(st, p, th, assistant_id=th["graph_id"], correlation_id=cid, command={"resume": resume},
                          stream_mode=["values"])

    run, replayed = await to_thread.run_sync(submit)
    out: dict[str, Any] = {"thread_id": thread_id, "decision": resume["decision"], "plan_hash": resume["plan_hash"],
                           "reviewer": p.user_id, "idempotent_replay": replayed}
    if wait:
        run = await await_run(st.queue, run, timeout=300, poll_s=st.wait_poll_s)
        out["result"] = await to_thread.run_sync(wait_result, st.runtime, st.queue, run)
    out["run"] = run_out(run)
    return out


@router.post("/approvals/{thread_id}/approve", summary="Approve a plan", **returns(DecisionOut))
async def approve(thread_id: str, body: ApproveBody, st: ApiState = Depends(get_state),
                  p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Approve the plan with ``plan_hash``; the run resumes, executes and verifies."""
    return await _decide(st, p, thread_id, {"decision": "approve", "plan_hash": body.plan_hash, "reason": body.reason},
                         cid, body.wait)


@router.post("/approvals/{thread_id}/reject", summary="Reject a plan", **returns(DecisionOut))
async def reject(thread_id: str, body: RejectBody, st: ApiState = Depends(get_state),
                 p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Reject the plan with ``plan_hash``; the run ends ``rejected``."""
    return await _decide(st, p, thread_id, {"decision": "reject", "plan_hash": body.plan_hash, "reason": body.reason},
                         cid, body.wait)


@router.post("/approvals/{thread_id}/edit", summary="Edit a plan downward, then approve it", **returns(DecisionOut))
async def edit_then_approve(thread_id: str, body: EditBody, st: ApiState = Depends(get_state),
                            p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Lower arguments (e.g. a smaller refund); the edited plan is re-validated, then executed."""
    resume = {"decision": "approve", "plan_hash": body.plan_hash, "reason": body.reason,
              "edits": [e.model_dump() for e in body.edits]}
    return await _decide(st, p, thread_id, resume, cid, body.wait)
