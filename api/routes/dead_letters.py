"""Dead letters: runs that exhausted their transient-failure retries; an admin can requeue them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from api.deps import ApiState, request_correlation_id, get_state, require_roles
from api.errors import http_error
from api.models import MAX_OFFSET, DeadLetterPage, RunOut, returns
from api.services import is_uuid, run_out
from engine.queue import NotFound, ThreadBusy
from keel.principals import Principal

router = APIRouter(tags=["dead letters"])


@router.get("/dead-letters", summary="Dead-lettered runs", **returns(DeadLetterPage))
def list_dead_letters(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                      st: ApiState = Depends(get_state),
                      p: Principal = Depends(require_roles("approver", "admin"))) -> dict[str, Any]:
    """The tenant's runs with status ``dead``, newest first, with their last error."""
    return {"items": [run_out(r) for r in st.queue.list_dead(p.tenant, limit=limit, offset=offset)],
            "limit": limit, "offset": offset}


@router.post("/dead-letters/{run_id}/retry", summary="Retry a dead-lettered run (admin)", **returns(RunOut))
def retry_dead_letter(run_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(require_roles("admin")),
                      cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Requeue the run with a fresh retry budget; it resumes from its last checkpoint."""
    try:
        if not is_uuid(run_id):
            raise NotFound(run_id)
        run = st.queue.retry_dead(p.tenant, run_id)
    except NotFound:
        raise http_error(404, "run_not_found", f"run {run_id} not found") from None
    except ThreadBusy as e:
        raise http_error(409, "not_dead", str(e)) from None
    st.runtime.audit.append(p.tenant, "admin", actor=p.user_id, thread_id=run["thread_id"], correlation_id=cid,
                            data={"event": "dead_letter_retried", "run_id": run_id})
    return run_out(run)
