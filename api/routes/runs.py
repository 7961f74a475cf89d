"""Runs on a thread: background create, wait, SSE stream, get, list, cancel, join; and
the same three creates on a new thread (langgraph-sdk's stateless ``runs.*(None, …)``).

Runs are queued (see :mod:`engine.queue`) and executed by workers, possibly in other
processes; ``wait``/``join`` poll the run's row, and streams tail the events the worker
stores (``values``/``updates``), so any server can serve any run.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AbstractContextManager
from functools import partial
from typing import Any
from collections.abc import AsyncIterator

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import ApiState, request_correlation_id, get_principal, get_state
from api.errors import http_error
from api.models import MAX_OFFSET, SUPPORTED_STREAM_MODES, RunCreate, RunOut, json_bytes, returns
from api.services import (
    await_run,
    check_admission,
    is_uuid,
    resolve_assistant,
    run_out,
    submit_run,
    thread_or_404,
    wait_result,
)
from engine.queue import TERMINAL, NotCancellable, NotFound, new_id
from engine.run_context import client_context_refusal
from keel.db import IntegrityError
from keel.principals import Principal

router = APIRouter(tags=["runs"])


class _EventStream(StreamingResponse):
    """Server-sent events (documents the media type in the OpenAPI document)."""

    media_type = "text/event-stream"


_SSE = {200: {"description": "Server-sent events", "content": {"text/event-stream": {"schema": {
    "type": "object",
    "description": "One event: ``metadata`` first, then the requested modes' events (``values``, ``updates``, "
                   "``messages``/``messages/partial``/``messages/metadata``/``messages/complete``, ``events``, "
                   "``debug``, ``custom``, ``tasks``, ``checkpoints``; ``MODE|NAMESPACE`` from subgraphs), ``error`` "
                   "if the run failed; ``data`` is JSON, ``id`` the sequence number to resume after (``Last-Event-ID``).",
    "properties": {"event": {"type": "string"},
                   "data": {"type": "string"}, "id": {"type": "string"}},
    "required": ["event", "data"],
}}}}}

_STATUSES = ("pending", "running", "error", "success", "timeout", "interrupted", "dead")


def _create(st: ApiState, p: Principal, thread_id: str, body: RunCreate, cid: str, default_modes: list[str],
            run_id: str | None = None) -> tuple[dict, bool]:
    modes = body.modes(default_modes)
    if body.input is not None and body.command is not None:
        raise http_error(422, "invalid_request", "send either input or command, not both")
    if body.context:  # keel's own context (support) is never the client's; another graph's is validated
        reason = client_context_refusal(st.runtime, resolve_assistant(body.assistant_id, st.runtime, p.tenant)[1],
                                        body.context)
        if reason is not None:
            raise http_error(422, "invalid_context", reason)
    try:
        th = thread_or_404(st.queue, p, thread_id)
    except HTTPException:
        if body.if_not_exists != "create":
            raise
        if body.command is None:
            check_admission(st.runtime, p)  # a refused run leaves no thread behind
        try:
            th, _ = st.queue.create_thread(p.tenant, p.user_id, thread_id=_uuid_or_422(thread_id), if_exists="do_nothing")
        except IntegrityError:  # the id is another tenant's: it stays invisible
            raise http_error(404, "thread_not_found", f"thread {thread_id} not found") from None
    checkpoint_id = body.checkpoint_id or (body.checkpoint.checkpoint_id if body.checkpoint else None)
    if checkpoint_id and (body.input is not None or body.command is not None):
        raise http_error(422, "invalid_request", "a replay from a checkpoint takes no input or command")
    if checkpoint_id:
        _checkpoint_or_404(st, th, checkpoint_id)
    return submit_run(
        st, p, th, assistant_id=body.assistant_id, correlation_id=cid, input=body.input, command=body.command,
        checkpoint_id=checkpoint_id, stream_mode=modes, metadata=body.metadata,
        multitask_strategy=body.multitask_strategy or "reject", config=body.run_config(),
        interrupt_before=body.interrupt_before, interrupt_after=body.interrupt_after,
        after_seconds=body.after_seconds or 0.0, stream_subgraphs=bool(body.stream_subgraphs),
        context=body.context or None, run_id=run_id,
    )


def _checkpoint_or_404(st: ApiState, th: dict[str, Any], checkpoint_id: str) -> None:
    """A replay must name a checkpoint of this thread: an unknown one would only fail in the worker."""
    found = th.get("graph_id") and is_uuid(checkpoint_id) and st.runtime.checkpointer.get_tuple(
        {"configurable": {"thread_id": th["thread_id"], "checkpoint_ns": "", "checkpoint_id": checkpoint_id}})
    if not found:
        raise http_error(404, "checkpoint_not_found", "checkpoint not found")


def _uuid_or_422(v: str) -> str:
    try:
        return str(uuid.UUID(v))
    except ValueError:
        raise http_error(422, "invalid_thread_id", "thread id must be a UUID") from None


def _run_or_404(st: ApiState, p: Principal, thread_id: str, run_id: str) -> dict[str, Any]:
    run = st.queue.get_run(p.tenant, thread_id, run_id) if is_uuid(run_id) and is_uuid(thread_id) else None
    if run is None:
        raise http_error(404, "run_not_found", f"run {run_id} not found")
    return run


@router.post("/threads/{thread_id}/runs", summary="Create a background run", **returns(RunOut))
def create_run(thread_id: str, body: RunCreate, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal),
               cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Queue a run and return it (``pending``). 409 if the thread is busy (strategy ``reject``)."""
    run, _ = _create(st, p, thread_id, body, cid, ["values"])
    return run_out(run)


async def _wait_body(st: ApiState, run: dict[str, Any], registered: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """Whitespace every 5 s while the run is in flight (keeps proxies from timing out), then the result
    (the run's final row and the thread's values read in one worker-thread hand-off)."""
    task = asyncio.ensure_future(await_run(st.queue, run, poll_s=st.wait_poll_s, registered=registered,
                                           then=partial(wait_result, st.runtime, st.queue)))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                break
            yield b"\n"
    finally:
        task.cancel()  # the client went away: stop waiting for it (a no-op once the task is done)
    result = task.result()
    yield json_bytes(result if result is not None else {}, ensure_ascii=True, default=str)


class _WaitResponse(StreamingResponse):
    """A ``wait``'s streaming response that owns the run's waiter, registered (``queue.done_event``)
    before the run was created: released however the response ends, even if its body never
    started (the client went away first)."""

    def __init__(self, content: Any, waiter: AbstractContextManager[Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._waiter = waiter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._waiter.__exit__(None, None, None)


def _run_path(run: dict[str, Any]) -> str:
    return f"/threads/{run['thread_id']}/runs/{run['run_id']}"


def _waiting(st: ApiState, run: dict[str, Any], waiter: AbstractContextManager[asyncio.Event] | None = None,
             registered: asyncio.Event | None = None) -> StreamingResponse:
    """The response of a ``wait``: the run's output; ``Content-Location`` names the run and
    ``Location`` its join URL (as LangGraph Server's)."""
    headers = {"Content-Location": _run_path(run), "Location": f"{_run_path(run)}/join", "X-Run-ID": run["run_id"]}
    if waiter is not None:
        return _WaitResponse(_wait_body(st, run, registered), waiter, media_type="application/json", headers=headers)
    return StreamingResponse(_wait_body(st, run), media_type="application/json", headers=headers)


@router.post("/threads/{thread_id}/runs/wait", summary="Create a run and wait for its output", **returns(dict[str, Any]))
async def wait_run(thread_id: str, body: RunCreate, st: ApiState = Depends(get_state),
                   p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> StreamingResponse:
    """The thread's final values (with ``__interrupt__`` when it pauses for approval)."""
    # the waiter for the run's end registers before the run is created (its id chosen here),
    # so no end can pass unseen and the wait needs no first read of the run
    rid = new_id()
    waiter = st.queue.done_event(rid)
    registered = waiter.__enter__()
    try:
        run, _ = await to_thread.run_sync(_create, st, p, thread_id, body, cid, [], rid)
    except BaseException:
        waiter.__exit__(None, None, None)
        raise
    if run["run_id"] != rid:  # a replayed approval decision: its original run, waited on as usual
        waiter.__exit__(None, None, None)
        return _waiting(st, run)
    return _waiting(st, run, waiter, registered)


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    out = f"event: {event}\ndata: {json_bytes(data, ensure_ascii=True, default=str).decode()}\n"
    if event_id is not None:
        out += f"id: {event_id}\n"
    return (out + "\n").encode()


async def _tail(st: ApiState, run: dict[str, Any], modes: list[str] | None, after: int = -1,
                send_metadata: bool = True) -> AsyncIterator[bytes]:
    """SSE of a run: ``metadata``, then its stored events until it ends (``error`` if it failed)."""
    if send_metadata:
        yield _sse("metadata", {"run_id": run["run_id"], "thread_id": run["thread_id"],
                                "attempt": max(1, run.get("attempts") or 1)})
    seq = after
    delay = 0.005
    saw_error = False
    while True:
        status = await to_thread.run_sync(st.queue.run_status, run["run_id"])
        events = await to_thread.run_sync(st.queue.events_after, run["run_id"], seq)
        for ev in events:
            seq = ev["seq"]
            if ev["event"] == "error":
                saw_error = True
            if modes is None or _mode_of(ev["event"]) in modes or ev["event"] == "error":
                yield _sse(ev["event"], ev["data"], ev["seq"])
        if events:
            delay = 0.005
            continue
        if status in TERMINAL or status is None:
            break
        await asyncio.sleep(delay)
        delay = min(st.wait_poll_s, delay * 2)
    final = await to_thread.run_sync(st.queue.get_run_any, run["run_id"])
    if final and final["status"] in ("error", "dead", "timeout") and not saw_error:
        yield _sse("error", {"error": final["status"], "message": final["error"] or final["status"]})


def _mode_of(event: str) -> str:
    """The stream mode an event belongs to (``updates|child:1`` → updates, ``messages/partial`` → messages)."""
    return event.split("|", 1)[0].split("/", 1)[0]


def _streaming(st: ApiState, run: dict[str, Any]) -> StreamingResponse:
    """The response of a ``stream``: the run's SSE (the worker stores only the modes asked
    for); ``Content-Location`` names the run and ``Location`` the stream to rejoin with
    ``Last-Event-ID`` (LangGraph's JS client reconnects only when it is there)."""
    return StreamingResponse(
        _tail(st, run, None), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "Content-Location": _run_path(run), "Location": f"{_run_path(run)}/stream"},
    )


@router.post("/threads/{thread_id}/runs/stream", summary="Create a run and stream it (SSE)", response_class=_EventStream,
             responses=_SSE)
async def stream_run(thread_id: str, body: RunCreate, st: ApiState = Depends(get_state),
                     p: Principal = Depends(get_principal), cid: str = Depends(request_correlation_id)) -> StreamingResponse:
    """Server-sent events: ``metadata``, then ``values`` and/or ``updates`` per step."""
    run, _ = await to_thread.run_sync(_create, st, p, thread_id, body, cid, ["values"])
    return _streaming(st, run)


# -- stateless runs: langgraph-sdk's ``runs.*(None, …)`` -------------------------------------
def _create_stateless(st: ApiState, p: Principal, body: RunCreate, cid: str, default_modes: list[str]) -> dict[str, Any]:
    """A run on a new thread of the caller's tenant (``run["thread_id"]``).

    keel keeps the thread when the run ends (``on_completion`` ``keep``): it is the run's
    record, the approval it may wait for lives on it, and ``keel prune`` is the retention
    policy. A request that fails validation leaves no thread behind."""
    if body.on_completion == "delete":
        raise http_error(422, "unsupported", "keel keeps every run's thread (its record, and where its approval "
                         "waits): send on_completion 'keep' or omit it; `keel prune` removes finished threads")
    if body.checkpoint is not None or body.checkpoint_id is not None:
        raise http_error(422, "invalid_request", "a stateless run starts on a new thread: it has no checkpoint")
    if body.command is None:
        check_admission(st.runtime, p)  # a refused run leaves no thread behind
    th, _ = st.queue.create_thread(p.tenant, p.user_id, thread_id=str(uuid.uuid4()))
    try:
        run, _ = _create(st, p, th["thread_id"], body, cid, default_modes)
    except HTTPException:
        st.queue.delete_thread(p.tenant, th["thread_id"])
        raise
    return run


@router.post("/runs", summary="Create a background run on a new thread", **returns(RunOut))
def create_stateless_run(body: RunCreate, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal),
                         cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Like ``POST /threads/{id}/runs`` on a thread created for it (its id is in the run)."""
    return run_out(_create_stateless(st, p, body, cid, ["values"]))


@router.post("/runs/wait", summary="Run on a new thread and wait for its output", **returns(dict[str, Any]))
async def wait_stateless_run(body: RunCreate, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal),
                             cid: str = Depends(request_correlation_id)) -> StreamingResponse:
    """The new thread's final values (with ``__interrupt__`` when it pauses for approval);
    ``Content-Location`` names the thread and run."""
    return _waiting(st, await to_thread.run_sync(_create_stateless, st, p, body, cid, []))


@router.post("/runs/stream", summary="Run on a new thread and stream it (SSE)", response_class=_EventStream,
             responses=_SSE)
async def stream_stateless_run(body: RunCreate, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal),
                               cid: str = Depends(request_correlation_id)) -> StreamingResponse:
    """Server-sent events of a run on a new thread, as ``POST /threads/{id}/runs/stream``."""
    return _streaming(st, await to_thread.run_sync(_create_stateless, st, p, body, cid, ["values"]))


@router.get("/threads/{thread_id}/runs", summary="List runs", **returns(list[RunOut]))
def list_runs(thread_id: str, limit: int = Query(10, ge=1, le=1000), offset: int = Query(0, ge=0, le=MAX_OFFSET),
              status: str | None = Query(None), st: ApiState = Depends(get_state),
              p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """The thread's runs, newest first."""
    if status is not None and status not in _STATUSES:
        raise http_error(422, "invalid_status", f"status must be one of {', '.join(_STATUSES)}")
    thread_or_404(st.queue, p, thread_id)
    return [run_out(r) for r in st.queue.list_runs(p.tenant, thread_id, limit=limit, offset=offset, status=status)]


@router.get("/threads/{thread_id}/runs/{run_id}", summary="Get a run", **returns(RunOut))
def get_run(thread_id: str, run_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """One run."""
    return run_out(_run_or_404(st, p, thread_id, run_id))


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run", **returns(RunOut | None))
async def cancel_run(thread_id: str, run_id: str, wait: int = Query(0, ge=0, le=1),
                     action: str = Query("interrupt", pattern="^(interrupt|rollback)$"),
                     st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> Any:
    """A pending run ends ``interrupted`` at once, a running one after its current step.

    A run applying an approval decision: cancelling it while queued withdraws the decision
    (the plan waits for one again); once a worker started it, 409 ``approval_executing``."""
    try:
        run = await to_thread.run_sync(st.queue.cancel_run, p.tenant, thread_id, run_id)
    except NotFound:
        raise http_error(404, "run_not_found", f"run {run_id} not found") from None
    except NotCancellable:
        raise http_error(409, "approval_executing", "the approved plan is already executing; it runs to its end") from None
    withdrawn = run.pop("withdrawn_decision", None)
    if withdrawn:
        await to_thread.run_sync(_audit_withdrawal, st, p, thread_id, run_id, withdrawn)
    if wait:
        run = await await_run(st.queue, run, timeout=60, poll_s=st.wait_poll_s)
    return run_out(run) if wait else None


def _audit_withdrawal(st: ApiState, p: Principal, thread_id: str, run_id: str, decision: dict[str, Any]) -> None:
    # no "decision" key: this row must never read as an approval (EXECUTE_ACTION looks for those)
    st.runtime.audit.append(p.tenant, "approval", actor=p.user_id, thread_id=thread_id,
                            data={"event": "decision_withdrawn", "run_id": run_id, "plan_hash": decision["plan_hash"],
                                  "withdrawn": decision["decision"], "reviewer": decision["reviewer"], "via": "api"})


@router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run", **returns(dict[str, Any]))
async def join_run(thread_id: str, run_id: str, st: ApiState = Depends(get_state),
                   p: Principal = Depends(get_principal)) -> StreamingResponse:
    """Blocks until the run ends; returns the thread's values like ``wait``."""
    run = await to_thread.run_sync(_run_or_404, st, p, thread_id, run_id)
    return StreamingResponse(_wait_body(st, run), media_type="application/json")


@router.get("/threads/{thread_id}/runs/{run_id}/stream", summary="Join a run's stream (SSE)", response_class=_EventStream,
            responses=_SSE)
async def join_stream(thread_id: str, run_id: str, request: Request, stream_mode: list[str] | None = Query(None),
                      st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> StreamingResponse:
    """Replays the run's stored events (after ``Last-Event-ID``) and follows it to the end."""
    run = await to_thread.run_sync(_run_or_404, st, p, thread_id, run_id)
    last = request.headers.get("last-event-id") or ""
    numeric = last.isascii() and last.isdigit()  # "²" is a digit to str.isdigit, not to int()
    if numeric and len(last) > 18:  # not a seq keel sent, and beyond a SQL integer
        raise http_error(422, "invalid_last_event_id", "Last-Event-ID is not an event id of this run")
    after = int(last) if numeric else -1
    modes = None
    stream_mode = [m for m in stream_mode or () if m]  # langgraph-sdk sends ``stream_mode=`` for "all"
    if stream_mode:
        bad = [m for m in stream_mode if m not in SUPPORTED_STREAM_MODES]
        if bad:
            raise http_error(422, "unsupported_stream_mode", f"stream modes {bad} are not supported")
        modes = ["messages" if m == "messages-tuple" else m for m in stream_mode]
    return StreamingResponse(_tail(st, run, modes, after, send_metadata=after < 0),
                             media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, summary="Delete a run")
def delete_run(thread_id: str, run_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> None:
    """Runs are kept as the thread's record; deleting one is refused."""
    _run_or_404(st, p, thread_id, run_id)
    raise http_error(403, "forbidden", "runs are part of the thread's record and cannot be deleted; delete the thread")
