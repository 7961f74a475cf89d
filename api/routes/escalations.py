"""Escalations: escalated runs of the caller's tenant, take-over and resolution (approver, admin).

``GET /escalations`` lists them with reason codes (``state``: ``active`` — open and taken —
by default, or ``open``, ``taken``, ``resolved``, ``all``); ``GET /escalations/{thread_id}``
adds the ticket (DLP-redacted), the evidence and the planned actions from the thread's final
state; ``POST …/take`` assigns it to the caller (visible to the team; 409 when someone else
has it); ``POST …/resolve`` records what was done and closes it (its assignee, or an admin).
Each step is audited (kind ``escalation``) by :mod:`engine.escalations`; another tenant's
thread looks exactly like a missing one (404).
"""

from __future__ import annotations

from typing import Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, Query

from api.deps import ApiState, request_correlation_id, get_state, require_roles
from api.errors import http_error
from api.models import MAX_OFFSET
from engine.escalations import Escalation, EscalationError, Resolution
from engine.review import review_desk, state_reader
from keel.principals import Principal

router = APIRouter(tags=["escalations"])

_REVIEWERS = require_roles("approver", "admin")


def _call(fn: Any, *args: Any, **kwargs: Any) -> Escalation:
    try:
        return fn(*args, **kwargs)
    except EscalationError as e:
        raise http_error(e.http_status, e.code, e.message) from None


@router.get("/escalations", summary="Escalated runs")
def list_escalations(state: Literal["active", "open", "taken", "resolved", "all"] = Query("active"),
                     limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                     st: ApiState = Depends(get_state), p: Principal = Depends(_REVIEWERS)) -> dict[str, Any]:
    """The tenant's escalated runs, oldest first, with reason codes and who has each one."""
    store = review_desk(st.runtime).escalations
    items = store.list(p.tenant, state=state, limit=limit, offset=offset)
    total = store.count(p.tenant, state=state)
    return {"items": [e.model_dump(exclude={"evidence", "ticket", "actions"}) for e in items], "total": total,
            "limit": limit, "offset": offset, "next_offset": offset + limit if offset + limit < total else None}


@router.get("/escalations/{thread_id}", summary="One escalated run with its evidence")
async def get_escalation(thread_id: str, st: ApiState = Depends(get_state),
                         p: Principal = Depends(_REVIEWERS)) -> dict[str, Any]:
    """Reason codes, assignee, resolution, the ticket (redacted), evidence and planned actions."""
    store = review_desk(st.runtime).escalations
    esc = await to_thread.run_sync(lambda: _call(store.get, p.tenant, thread_id, state_of=state_reader(st.runtime)))
    return esc.model_dump()


@router.post("/escalations/{thread_id}/take", summary="Take an escalation over")
def take_escalation(thread_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(_REVIEWERS),
                    cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Assign the escalation to the caller; repeating it is harmless, taking someone else's is 409."""
    store = review_desk(st.runtime).escalations
    return _call(store.take, p.tenant, thread_id, actor=p.user_id, correlation_id=cid).model_dump(
        exclude={"evidence", "ticket", "actions"})


@router.post("/escalations/{thread_id}/resolve", summary="Record a resolution and close the escalation")
def resolve_escalation(thread_id: str, body: Resolution, st: ApiState = Depends(get_state),
                       p: Principal = Depends(_REVIEWERS), cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """What was done (``outcome`` and ``resolution`` text), by the caller; closes it. Only its
    assignee (or an admin) may; an escalation nobody took is taken by the caller first."""
    store = review_desk(st.runtime).escalations
    return _call(store.resolve, p.tenant, thread_id, body, actor=p.user_id, is_admin=p.role == "admin",
                 correlation_id=cid).model_dump(exclude={"evidence", "ticket", "actions"})
