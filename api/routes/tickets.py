"""Tickets: start the support workflow on a ticket (a new thread and its run)."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException

from api.deps import ApiState, request_correlation_id, get_state, require_roles
from api.errors import http_error
from api.models import TicketCreate, TicketOut, returns
from api.services import START_ROLES, await_run, check_admission, run_out, submit_run, wait_result
from keel.principals import Principal

router = APIRouter(tags=["tickets"])


@router.post("/tickets", status_code=201, summary="Create a thread and run from a ticket", **returns(TicketOut, 201))
async def create_ticket(body: TicketCreate, st: ApiState = Depends(get_state),
                        p: Principal = Depends(require_roles(*START_ROLES)),
                        cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """The ticket must be of the caller's tenant. Returns the thread and the queued run
    (with ``wait``: the run's result, ``__interrupt__`` included when it waits for approval).
    429 with ``Retry-After`` when the tenant's or the caller's daily quota is spent."""
    if body.ticket.tenant != p.tenant:
        raise http_error(403, "wrong_tenant", "the ticket belongs to another tenant")

    def submit() -> tuple[dict[str, Any], dict[str, Any]]:
        check_admission(st.runtime, p)  # a spent daily quota: 429 before the thread is created
        meta = {**(body.metadata or {}), "ticket_id": body.ticket.id, "graph_id": "support"}
        th, _ = st.queue.create_thread(p.tenant, p.user_id, metadata=meta)
        try:
            run, _ = submit_run(st, p, th, assistant_id="support", correlation_id=cid,
                                input={"ticket": body.ticket.model_dump(mode="json")}, stream_mode=["values"])
        except HTTPException:  # refused after all (a quota spent meanwhile): keep no empty thread
            st.queue.delete_thread(p.tenant, th["thread_id"])
            raise
        return th, run

    th, run = await to_thread.run_sync(submit)
    out: dict[str, Any] = {"thread_id": th["thread_id"], "ticket_id": body.ticket.id}
    if body.wait:
        run = await await_run(st.queue, run, timeout=300, poll_s=st.wait_poll_s)
        out["result"] = await to_thread.run_sync(wait_result, st.runtime, st.queue, run)
    out["run"] = run_out(run)
    return out
