"""Writing a thread's state (``POST /threads/{id}/state``) and copying a thread
(``POST /threads/{id}/copy``), as LangGraph Server has them, within keel's rules
(:mod:`engine.state_writes`): on a graph with keel's approval block a write that would
change a pending plan, an approval or a policy outcome is refused with 403 and a reason;
every write is audited with its author."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.deps import ApiState, request_correlation_id, get_principal, get_state, require_roles
from api.errors import http_error
from api.models import ThreadCopyOut, ThreadOut, ThreadStateUpdate, returns
from api.services import START_ROLES, is_uuid, thread_or_404, thread_out
from engine.approvals import pending_approval
from engine.jsonable import jsonable
from engine.queue import NotFound
from engine.state_writes import copy_thread_checkpoints, refusal
from keel.principals import Principal

router = APIRouter(tags=["threads"])


def _checkpoint(cfg: dict[str, Any]) -> dict[str, Any]:
    c = cfg.get("configurable", {})
    return {"thread_id": c.get("thread_id"), "checkpoint_ns": c.get("checkpoint_ns", ""),
            "checkpoint_id": c.get("checkpoint_id"), "checkpoint_map": c.get("checkpoint_map")}


@router.post("/threads/{thread_id}/state", summary="Update thread state",
             responses={200: {"description": "The new checkpoint", "content": {"application/json": {"schema": {
                 "type": "object", "properties": {"checkpoint": {"type": "object"}}}}}}})
def update_thread_state(thread_id: str, body: ThreadStateUpdate, st: ApiState = Depends(get_state),
                        p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Write ``values`` to the thread's latest checkpoint (or ``checkpoint_id``'s) as if
    ``as_node`` had returned them; returns the new checkpoint. 403 ``state_update_refused``
    where it would bypass policy (or for a role that starts no runs), 409 while a run is in
    flight or before the thread ran a graph."""
    th = thread_or_404(st.queue, p, thread_id)
    if p.role not in START_ROLES:
        raise http_error(403, "state_update_refused", f"state writes need role {' or '.join(START_ROLES)}")
    if not th.get("graph_id"):
        raise http_error(409, "no_graph", "the thread has not run a graph yet: start a run first")
    if th["status"] == "busy":
        raise http_error(409, "thread_busy", "a run is in flight on this thread; wait for it or cancel it")
    graph = st.runtime.graph(th["graph_id"])
    checkpoint_id = body.checkpoint_id or (body.checkpoint.checkpoint_id if body.checkpoint else None)
    cfg: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    if checkpoint_id:
        if not is_uuid(checkpoint_id) or st.runtime.checkpointer.get_tuple(
                {"configurable": {**cfg["configurable"], "checkpoint_id": checkpoint_id}}) is None:
            raise http_error(404, "checkpoint_not_found", "checkpoint not found")
        cfg["configurable"]["checkpoint_id"] = checkpoint_id
    pending = pending_approval(st.runtime, thread_id, th["graph_id"]) is not None
    refused = refusal(graph, body.values or {}, body.as_node, pending)
    if refused is not None:
        raise http_error(refused.status, refused.code, refused.message)
    try:
        new_cfg = graph.update_state(cfg, body.values, as_node=body.as_node)
    except (ValueError, KeyError, TypeError) as e:  # LangGraph's refusals of the update itself
        raise http_error(422, "invalid_state_update", f"{type(e).__name__}: {str(e)[:300]}") from None
    snap = graph.get_state({"configurable": {"thread_id": thread_id}})
    st.queue.mark_state_written(p.tenant, thread_id, "interrupted" if snap.next else "idle")
    checkpoint = _checkpoint(new_cfg)
    st.runtime.audit.append(p.tenant, "state_update", actor=p.user_id, thread_id=thread_id, correlation_id=cid,
                            data={"as_node": body.as_node, "fields": sorted(body.values or {}),
                                  "values": jsonable(body.values), "from_checkpoint": checkpoint_id,
                                  "checkpoint_id": checkpoint["checkpoint_id"], "via": "api"})
    return {"checkpoint": checkpoint}


@router.post("/threads/{thread_id}/copy", summary="Copy a thread", **returns(ThreadOut))
def copy_thread(thread_id: str, st: ApiState = Depends(get_state),
                p: Principal = Depends(require_roles(*START_ROLES))) -> dict[str, Any]:
    """A new thread of the caller's tenant with this thread's metadata and checkpoint
    history (no runs, no recorded approval decisions: a plan waiting on the copy is decided
    there anew)."""
    th = thread_or_404(st.queue, p, thread_id)
    meta = {**(th["metadata"] or {}), "copied_from": thread_id}
    new, _ = st.queue.create_thread(p.tenant, p.user_id, metadata=meta, graph_id=th.get("graph_id"))
    if th.get("graph_id"):
        copy_thread_checkpoints(st.runtime.checkpointer, thread_id, new["thread_id"])
        snap = st.runtime.graph(th["graph_id"]).get_state({"configurable": {"thread_id": new["thread_id"]}})
        try:
            new = st.queue.mark_state_written(p.tenant, new["thread_id"], "interrupted" if snap.next else "idle")
        except NotFound:  # deleted meanwhile
            raise http_error(404, "thread_not_found", "thread not found") from None
    return thread_out(st.runtime, new)


__all__ = ["router", "ThreadCopyOut"]
