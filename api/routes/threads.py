"""Threads, their state and history, and replay/fork from a checkpoint.

State writes and copies are in :mod:`api.routes.thread_state` (within keel's rules:
:mod:`engine.state_writes`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import ApiState, request_correlation_id, get_principal, get_state, require_roles
from api.errors import http_error
from api.models import (
    HistoryRequest,
    ReplayBody,
    ReplayOut,
    StateCheckpointRequest,
    ThreadCount,
    ThreadCreate,
    ThreadOut,
    ThreadPatch,
    ThreadSearch,
    ThreadStateOut,
    returns,
)
from api.services import (
    START_ROLES,
    await_run,
    check_admission,
    is_uuid,
    resolve_assistant,
    run_out,
    state_out,
    submit_run,
    thread_or_404,
    thread_out,
    wait_result,
)
from engine.queue import NotCancellable, NotFound, ThreadBusy
from engine.state_writes import cancel_thread_runs
from keel.db import IntegrityError
from keel.principals import Principal

router = APIRouter(tags=["threads"])


@router.post("/threads", summary="Create a thread", **returns(ThreadOut))
def create_thread(body: ThreadCreate, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """A new, empty thread of the caller's tenant (``if_exists``: raise → 409, do_nothing → the existing one)."""
    meta = dict(body.metadata or {})
    graph_id = meta.get("graph_id") if isinstance(meta.get("graph_id"), str) else None
    if graph_id is not None:
        graph_id = resolve_assistant(graph_id)[1]
    try:
        th, _ = st.queue.create_thread(p.tenant, p.user_id, thread_id=body.thread_id, metadata=meta,
                                       if_exists=body.if_exists or "raise", graph_id=None)
    except IntegrityError:
        raise http_error(409, "thread_exists", "thread already exists") from None
    return thread_out(st.runtime, th, with_values=False)


@router.post("/threads/search", summary="Search threads", **returns(list[ThreadOut]))
def search_threads(body: ThreadSearch, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """The caller's tenant's threads, filtered by status, ids or metadata."""
    rows = st.queue.search_threads(p.tenant, status=body.status, ids=body.ids, metadata=body.metadata,
                                   limit=body.limit, offset=body.offset, sort_by=body.sort_by or "created_at",
                                   sort_order=body.sort_order or "desc")
    return [thread_out(st.runtime, r) for r in rows]


@router.post("/threads/count", summary="Count threads")
def count_threads(body: ThreadCount, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> int:
    """How many threads match."""
    if body.metadata or body.values:
        return len(st.queue.search_threads(p.tenant, status=body.status, metadata=body.metadata, limit=1_000_000))
    return st.queue.count_threads(p.tenant, body.status)


@router.get("/threads/{thread_id}", summary="Get a thread", **returns(ThreadOut))
def get_thread(thread_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """The thread with its latest values and pending interrupts."""
    return thread_out(st.runtime, thread_or_404(st.queue, p, thread_id))


@router.patch("/threads/{thread_id}", summary="Update thread metadata", **returns(ThreadOut))
def patch_thread(thread_id: str, body: ThreadPatch, st: ApiState = Depends(get_state),
                 p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Merge metadata into the thread's."""
    thread_or_404(st.queue, p, thread_id)
    return thread_out(st.runtime, st.queue.update_thread_metadata(p.tenant, thread_id, body.metadata))


@router.delete("/threads/{thread_id}", status_code=204, summary="Delete a thread")
def delete_thread(thread_id: str, st: ApiState = Depends(get_state),
                  p: Principal = Depends(require_roles(*START_ROLES))) -> Response:
    """Delete the thread, its runs and checkpoints; runs in flight are cancelled first (as
    LangGraph Server does). 409 if one applies an approved plan (it runs to its end)."""
    th = thread_or_404(st.queue, p, thread_id)
    try:
        try:
            st.queue.delete_thread(p.tenant, thread_id)
        except ThreadBusy:
            cancel_thread_runs(st.queue, p.tenant, thread_id)
            st.queue.delete_thread(p.tenant, thread_id)
    except ThreadBusy:
        raise http_error(409, "thread_busy", "a run on the thread did not stop in time; retry") from None
    except NotCancellable:
        raise http_error(409, "approval_executing", "the approved plan is executing on this thread; it runs to its "
                         "end, then the thread can be deleted") from None
    except NotFound:
        raise http_error(404, "thread_not_found", f"thread {thread_id} not found") from None
    st.runtime.crons.delete_for_thread(thread_id)  # its crons have no thread to run on any more
    if th.get("graph_id"):
        try:
            st.runtime.checkpointer.delete_thread(thread_id)
        except Exception:
            pass
    return Response(status_code=204)


def _check_checkpoint_id(checkpoint_id: str | None) -> None:
    if checkpoint_id is not None and not is_uuid(checkpoint_id):
        raise http_error(404, "checkpoint_not_found", "checkpoint not found")


def _snap(st: ApiState, th: dict[str, Any], checkpoint_id: str | None = None) -> Any:
    if not th.get("graph_id"):
        if checkpoint_id:
            raise http_error(404, "checkpoint_not_found", "checkpoint not found")
        return None
    cfg: dict[str, Any] = {"configurable": {"thread_id": th["thread_id"]}}
    if checkpoint_id:
        _check_checkpoint_id(checkpoint_id)
        cfg["configurable"]["checkpoint_id"] = checkpoint_id
        if st.runtime.checkpointer.get_tuple({"configurable": {**cfg["configurable"], "checkpoint_ns": ""}}) is None:
            raise http_error(404, "checkpoint_not_found", "checkpoint not found")
    return st.runtime.graph(th["graph_id"]).get_state(cfg)


@router.get("/threads/{thread_id}/state", summary="Thread state", **returns(ThreadStateOut))
def get_thread_state(thread_id: str, subgraphs: bool = False, st: ApiState = Depends(get_state),
                     p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Latest checkpoint: values, next nodes, tasks with interrupts."""
    th = thread_or_404(st.queue, p, thread_id)
    return state_out(_snap(st, th), thread_id)


@router.get("/threads/{thread_id}/state/{checkpoint_id}", summary="Thread state at a checkpoint", **returns(ThreadStateOut))
def get_thread_state_at(thread_id: str, checkpoint_id: str, subgraphs: bool = False, st: ApiState = Depends(get_state),
                        p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """State as of one checkpoint."""
    th = thread_or_404(st.queue, p, thread_id)
    return state_out(_snap(st, th, checkpoint_id), thread_id)


@router.post("/threads/{thread_id}/state/checkpoint", summary="Thread state at a checkpoint", **returns(ThreadStateOut))
def post_thread_state_at(thread_id: str, body: StateCheckpointRequest, st: ApiState = Depends(get_state),
                         p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """State as of ``checkpoint.checkpoint_id``."""
    th = thread_or_404(st.queue, p, thread_id)
    return state_out(_snap(st, th, body.checkpoint.checkpoint_id), thread_id)


@router.post("/threads/{thread_id}/history", summary="Thread history", **returns(list[ThreadStateOut]))
def thread_history(thread_id: str, body: HistoryRequest, st: ApiState = Depends(get_state),
                   p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """Checkpoints newest first."""
    th = thread_or_404(st.queue, p, thread_id)
    if not th.get("graph_id"):
        return []
    cfg: dict[str, Any] = {"configurable": {"thread_id": thread_id}}
    if body.checkpoint and body.checkpoint.checkpoint_id:
        _check_checkpoint_id(body.checkpoint.checkpoint_id)
        cfg["configurable"]["checkpoint_id"] = body.checkpoint.checkpoint_id
    before = body.before.checkpoint_id if hasattr(body.before, "checkpoint_id") else body.before
    _check_checkpoint_id(before or None)
    kw: dict[str, Any] = {"limit": body.limit}
    if before:
        kw["before"] = {"configurable": {"thread_id": thread_id, "checkpoint_id": before}}
    if body.metadata:
        kw["filter"] = body.metadata
    g = st.runtime.graph(th["graph_id"])
    return [state_out(s, thread_id) for s in g.get_state_history(cfg, **kw)]


@router.post("/threads/{thread_id}/replay", summary="Replay or fork from a checkpoint", **returns(ReplayOut))
async def replay_thread(thread_id: str, body: ReplayBody, st: ApiState = Depends(get_state),
                        p: Principal = Depends(require_roles(*START_ROLES)),
                        cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Replay: re-execute this thread from ``checkpoint_id`` (a new branch of its history).
    Fork: copy that checkpoint into a new thread (without any recorded approval) and run
    it there. Either way the run is queued like any other; approvals apply again."""
    from anyio import to_thread

    return await to_thread.run_sync(_replay_sync, thread_id, body, st, p, cid) if not body.wait else \
        await _replay_wait(thread_id, body, st, p, cid)


def _replay_sync(thread_id: str, body: ReplayBody, st: ApiState, p: Principal, cid: str) -> dict[str, Any]:
    th = thread_or_404(st.queue, p, thread_id)
    if not th.get("graph_id"):
        raise http_error(404, "checkpoint_not_found", "checkpoint not found")
    _check_checkpoint_id(body.checkpoint_id)
    saver = st.runtime.checkpointer
    tup = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": body.checkpoint_id}})
    if tup is None:
        raise http_error(404, "checkpoint_not_found", "checkpoint not found")
    target = th
    if body.fork:
        check_admission(st.runtime, p)  # a refused fork leaves no thread behind
        target, _ = st.queue.create_thread(p.tenant, p.user_id, metadata={**(body.metadata or {}), "forked_from": {
            "thread_id": thread_id, "checkpoint_id": body.checkpoint_id}})
        _copy_checkpoint(saver, tup, target["thread_id"])
    run, _ = submit_run(st, p, {**target, "graph_id": th["graph_id"]} if body.fork else target,
                        assistant_id=th["graph_id"], correlation_id=cid, checkpoint_id=body.checkpoint_id,
                        stream_mode=["values"], metadata={"replay_of": thread_id, "fork": body.fork})
    return {"thread_id": target["thread_id"], "run": run_out(run), "forked": body.fork}


async def _replay_wait(thread_id: str, body: ReplayBody, st: ApiState, p: Principal, cid: str) -> dict[str, Any]:
    from anyio import to_thread

    out = await to_thread.run_sync(_replay_sync, thread_id, body, st, p, cid)
    run = await to_thread.run_sync(st.queue.get_run, p.tenant, out["thread_id"], out["run"]["run_id"])
    run = await await_run(st.queue, run, poll_s=st.wait_poll_s)
    out["run"] = run_out(run)
    out["result"] = await to_thread.run_sync(wait_result, st.runtime, st.queue, run)
    return out


def _copy_checkpoint(saver: Any, tup: Any, new_thread_id: str) -> None:
    """Put one checkpoint (and its pending task writes, minus resume/interrupt/error
    writes) at the head of a new thread."""
    # LangGraph's pending-write channels for resume values, interrupts and errors
    RESUME, INTERRUPT, ERROR = "__resume__", "__interrupt__", "__error__"

    cfg = {"configurable": {"thread_id": new_thread_id, "checkpoint_ns": ""}}
    meta = {**(tup.metadata or {}), "source": "fork"}
    new_cfg = saver.put(cfg, tup.checkpoint, meta, dict(tup.checkpoint.get("channel_versions", {})))
    by_task: dict[str, list[tuple[str, Any]]] = {}
    for task_id, channel, value in tup.pending_writes or ():
        if channel in (RESUME, INTERRUPT, ERROR):
            continue
        by_task.setdefault(task_id, []).append((channel, value))
    for task_id, writes in by_task.items():
        saver.put_writes(new_cfg, writes, task_id)
