"""The tenant's hash-chained audit trail, and its verification."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.deps import ApiState, get_principal, get_state, require_roles
from api.models import MAX_OFFSET, AuditPage, ChainReportOut, ThreadAuditPage, returns
from api.services import thread_or_404
from keel.principals import Principal

router = APIRouter(tags=["audit"])


@router.get("/threads/{thread_id}/audit", summary="Audit rows of a thread", **returns(ThreadAuditPage))
def thread_audit(thread_id: str, limit: int = Query(1000, ge=1, le=10_000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                 st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Every route decision, policy decision, approval and tool call of the thread, oldest first,
    with actor, time and correlation id."""
    thread_or_404(st.queue, p, thread_id)
    rows = st.runtime.audit.list(p.tenant, thread_id=thread_id, limit=limit, offset=offset)
    return {"thread_id": thread_id, "items": [r.model_dump() for r in rows], "limit": limit, "offset": offset}


@router.get("/audit", summary="Audit rows of the tenant", **returns(AuditPage))
def tenant_audit(thread_id: str | None = Query(None, max_length=128), limit: int = Query(100, ge=1, le=10_000),
                 offset: int = Query(0, ge=0, le=MAX_OFFSET), st: ApiState = Depends(get_state),
                 p: Principal = Depends(require_roles("approver", "admin"))) -> dict[str, Any]:
    """The tenant's chain (optionally one thread), oldest first."""
    if thread_id is not None:
        thread_or_404(st.queue, p, thread_id)
    rows = st.runtime.audit.list(p.tenant, thread_id=thread_id, limit=limit, offset=offset)
    return {"items": [r.model_dump() for r in rows], "limit": limit, "offset": offset}


@router.get("/audit/verify", summary="Verify the audit chain", **returns(ChainReportOut))
def verify_audit(st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Recompute the tenant's chain; ``ok`` is false with the first bad row if any row was
    changed or deleted in the database."""
    return st.runtime.audit.verify(p.tenant).model_dump()
