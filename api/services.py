"""What the routers share: assistants, JSON shapes, and the one way to start a run.

:func:`submit_run` is the only code path that queues a run. Every route that starts,
resumes, replays or forks a thread goes through it, and it sends every resume of a
pending approval through :func:`engine.approvals.validate_resume` (the policy pack's
approval rules, same tenant, matching plan hash): the LangGraph
``command={"resume": …}`` route and keel's approvals endpoints obey the same rules.
Every new run (input, replay) is first counted against the daily quotas of the tenant and
the caller (:func:`admitted`, :mod:`engine.admission`): a spent quota is a 429 with
``Retry-After``, not a queued run. What is not HTTP lives in ``engine`` (graph registry,
approvals, admission, the queue); this module maps it to LangGraph Server's shapes and
to HTTP errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from anyio import to_thread
from fastapi import HTTPException
from pydantic import ValidationError

from api.errors import http_error
from engine import admission
from engine.admission import QuotaExceeded
from engine.approvals import approval_rules, interrupt_resume_refusal, pending_approval, validate_resume
from engine.jsonable import jsonable
from engine.queue import TERMINAL, NotFound, RunQueue, ThreadBusy
from engine.registry import graph_ids
from engine.runtime import Runtime
from guards.approvals import ApprovalError, decider_refusal
from guards.budgets import QuotaRefusal
from keel import metrics
from keel.audit import canonical_json
from keel.db import IntegrityError
from keel.principals import Principal
from keel.types import Ticket

__all__ = [
    "NAMESPACE_GRAPH",
    "assistant_out",
    "resolve_assistant",
    "assistant_record",
    "thread_or_404",
    "thread_out",
    "state_out",
    "run_out",
    "submit_run",
    "wait_result",
    "await_run",
    "is_uuid",
    "START_ROLES",
    "check_admission",
    "check_cron_input",
    "admitted",
]

NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
"""LangGraph Server derives a graph's default assistant id as ``uuid5(NAMESPACE_GRAPH, graph_id)``."""

START_ROLES = ("requester", "admin")
"""Roles that may start, replay or fork runs (approvers decide; they do not start work)."""

log = logging.getLogger("keel.api")


# -- assistants: one per graph of engine.registry -----------------------------------------
_CREATED = "2026-01-01T00:00:00+00:00"


def assistant_out(graph_id: str) -> dict[str, Any]:
    """The default assistant of a graph, shaped like LangGraph Server's."""
    return {
        "assistant_id": str(uuid.uuid5(NAMESPACE_GRAPH, graph_id)),
        "graph_id": graph_id,
        "config": {},
        "context": {},
        "created_at": _CREATED,
        "updated_at": _CREATED,
        "metadata": {"created_by": "system"},
        "version": 1,
        "name": graph_id,
        "description": None,
    }


def resolve_assistant(assistant_id: str, runtime: Runtime | None = None, tenant: str | None = None) -> tuple[str, str]:
    """``(assistant_id, graph_id)`` for a graph id or a default assistant's id, or (given the
    runtime and tenant) one of the tenant's own assistants; 404 if unknown."""
    for g in graph_ids():
        aid = str(uuid.uuid5(NAMESPACE_GRAPH, g))
        if assistant_id in (g, aid):
            return aid, g
    if runtime is not None and tenant is not None and is_uuid(assistant_id):
        own = runtime.assistants.get(tenant, assistant_id)
        if own is not None:
            return own["assistant_id"], own["graph_id"]
    raise http_error(404, "assistant_not_found", f"assistant {assistant_id!r} not found")


def assistant_record(runtime: Runtime, tenant: str, assistant_id: str) -> dict[str, Any]:
    """The assistant a run runs under, at its current version (a graph's default assistant,
    or one of the tenant's): ``assistant_id``, ``graph_id``, ``version``, ``config``, ``context``."""
    aid, graph_id = resolve_assistant(assistant_id, runtime, tenant)
    own = runtime.assistants.get(tenant, aid)
    return own if own is not None else assistant_out(graph_id)


# -- threads ----------------------------------------------------------------------------
def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID (thread and run ids are)."""
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return len(value) <= 64


def thread_or_404(queue: RunQueue, principal: Principal, thread_id: str) -> dict[str, Any]:
    """The caller's thread; another tenant's looks missing."""
    th = queue.get_thread(principal.tenant, thread_id) if is_uuid(thread_id) else None
    if th is None:
        raise http_error(404, "thread_not_found", f"thread {thread_id} not found")
    return th


def _snapshot(runtime: Runtime, thread: dict[str, Any], checkpoint_id: str | None = None) -> Any | None:
    if not thread.get("graph_id"):
        return None
    cfg: dict[str, Any] = {"configurable": {"thread_id": thread["thread_id"]}}
    if checkpoint_id:
        cfg["configurable"]["checkpoint_id"] = checkpoint_id
    return runtime.graph(thread["graph_id"]).get_state(cfg)


def _interrupts(snap: Any) -> list[dict[str, Any]]:
    return [jsonable(i) for i in (getattr(snap, "interrupts", ()) or ())]


def thread_out(runtime: Runtime, thread: dict[str, Any], *, with_values: bool = True) -> dict[str, Any]:
    """A thread shaped like LangGraph Server's (values and interrupts from its latest checkpoint)."""
    values: Any = {}
    interrupts: dict[str, list[dict[str, Any]]] = {}
    state_updated_at = thread["updated_at"]
    if with_values:
        snap = _snapshot(runtime, thread)
        if snap is not None:
            values = jsonable(snap.values)
            state_updated_at = snap.created_at or state_updated_at  # the latest checkpoint's time
            for t in snap.tasks or ():
                if t.interrupts:
                    interrupts[t.id] = [jsonable(i) for i in t.interrupts]
    return {
        "thread_id": thread["thread_id"],
        "created_at": thread["created_at"],
        "updated_at": thread["updated_at"],
        "state_updated_at": state_updated_at,
        "metadata": thread["metadata"],
        "status": thread["status"],
        "values": values,
        "interrupts": interrupts,
        "config": {},
        "error": None,
    }


def _checkpoint(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cfg:
        return None
    c = cfg.get("configurable", {})
    return {
        "thread_id": c.get("thread_id"),
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c.get("checkpoint_id"),
        "checkpoint_map": c.get("checkpoint_map"),
    }


def state_out(snap: Any, thread_id: str) -> dict[str, Any]:
    """A ``ThreadState`` (values, next, tasks, checkpoint, metadata, parent, interrupts)."""
    if snap is None:
        return {
            "values": {},
            "next": [],
            "tasks": [],
            "checkpoint": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": None, "checkpoint_map": None},
            "metadata": {},
            "created_at": None,
            "parent_checkpoint": None,
            "interrupts": [],
        }
    tasks = [
        {
            "id": t.id,
            "name": t.name,
            "path": jsonable(getattr(t, "path", ())),
            "error": str(t.error) if t.error else None,
            "interrupts": [jsonable(i) for i in t.interrupts],
            "checkpoint": None,
            "state": None,
            "result": jsonable(getattr(t, "result", None)),
        }
        for t in snap.tasks or ()
    ]
    return {
        "values": jsonable(snap.values),
        "next": list(snap.next or ()),
        "tasks": tasks,
        "checkpoint": _checkpoint(snap.config) or {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": None},
        "metadata": jsonable(snap.metadata or {}),
        "created_at": snap.created_at,
        "parent_checkpoint": _checkpoint(snap.parent_config),
        "interrupts": _interrupts(snap),
    }


# -- runs --------------------------------------------------------------------------------
def run_out(run: dict[str, Any]) -> dict[str, Any]:
    """A ``Run`` (LangGraph fields plus keel's: kind, attempts, retries, error, correlation id)."""
    return {
        "run_id": run["run_id"],
        "thread_id": run["thread_id"],
        "assistant_id": run["assistant_id"],
        "created_at": run["created_at"],
        "updated_at": run["updated_at"],
        "status": run["status"],
        "metadata": run["metadata"],
        "multitask_strategy": run["multitask_strategy"],
        "kwargs": {"stream_mode": run["stream_mode"]},
        "assistant_version": (run.get("payload") or {}).get("assistant_version"),
        "graph_id": run["graph_id"],
        "kind": run["kind"],
        "attempts": run["attempts"],
        "retries": run["retries"],
        "error": run["error"],
        "correlation_id": run["correlation_id"],
        "created_by": run["created_by"],
        "worker": run.get("last_worker"),
        "lease_expiries": run.get("lease_expiries") or 0,
        "dead_reason": run.get("dead_reason"),
        "versions": run.get("versions"),
    }


def _fingerprint(resume: dict[str, Any]) -> str:
    body = {"decision": resume.get("decision"), "edits": resume.get("edits") or []}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _check_ticket(graph_id: str, inp: Any, principal: Principal) -> None:
    """Support runs take ``{"ticket": TICKET}`` of the caller's own tenant."""
    if graph_id != "support":
        return
    if not isinstance(inp, dict) or set(inp) != {"ticket"}:
        raise http_error(422, "invalid_input", 'support runs take {"ticket": TICKET}')
    try:
        ticket = Ticket.model_validate(inp["ticket"])
    except ValidationError as e:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "ticket" for err in e.errors()})
        raise http_error(422, "invalid_ticket", f"invalid ticket: {', '.join(fields)}") from None
    if ticket.tenant != principal.tenant:
        raise http_error(403, "wrong_tenant", "the ticket belongs to another tenant")


def _paused(runtime: Runtime, thread: dict[str, Any], graph_id: str) -> bool:
    """Whether the thread stopped before its end (``interrupt_before``/``interrupt_after``, a
    plain interrupt): ``input: null`` then continues it, as on LangGraph Server."""
    if not thread.get("graph_id"):
        return False
    snap = runtime.graph(graph_id).get_state({"configurable": {"thread_id": thread["thread_id"]}})
    return bool(snap.next)


def check_cron_input(graph_id: str, inp: Any, principal: Principal) -> None:
    """A cron's input, checked when the cron is created with the rules of a run's input."""
    _check_ticket(graph_id, inp, principal)


def submit_run(
    st: Any,
    principal: Principal,
    thread: dict[str, Any],
    *,
    assistant_id: str,
    correlation_id: str,
    input: Any = None,
    command: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
    stream_mode: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    multitask_strategy: str = "reject",
    config: dict[str, Any] | None = None,
    interrupt_before: Any = None,
    interrupt_after: Any = None,
    after_seconds: float = 0.0,
    stream_subgraphs: bool = False,
    context: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue a run on ``thread``; returns ``(run, replayed)`` (``replayed``: an identical
    approval decision was already taken and its run is returned instead).

    Input runs and replays need the ``requester`` or ``admin`` role. A command on a thread
    waiting for a plan approval must be exactly ``{"resume": DECISION}`` and passes
    ``validate_resume``; a new input on such a thread is refused (409) so the pending
    plan cannot be silently abandoned or bypassed. ``run_id``: the new run's id, chosen by
    the caller (``runs/wait`` waits on it before the run exists); a replayed decision
    returns its original run instead.
    """
    runtime, queue = st.runtime, st.queue
    assistant = assistant_record(runtime, principal.tenant, assistant_id)
    aid, graph_id = assistant["assistant_id"], assistant["graph_id"]
    # the assistant's config and context under the run's own (the run's win key by key)
    config = {**assistant["config"], **(config or {})}
    context = {**assistant["context"], **(context or {})} or None
    if thread.get("graph_id") and thread["graph_id"] != graph_id:
        raise http_error(409, "graph_mismatch", f"thread runs graph {thread['graph_id']!r}, not {graph_id!r}")
    tid = thread["thread_id"]
    pending = pending_approval(runtime, tid, graph_id) if thread.get("graph_id") and thread["status"] != "busy" else None
    decision = None
    payload: dict[str, Any] = {"config": config or {}, "assistant_version": assistant["version"]}
    if interrupt_before:
        payload["interrupt_before"] = interrupt_before
    if interrupt_after:
        payload["interrupt_after"] = interrupt_after
    if stream_subgraphs:
        payload["stream_subgraphs"] = True
    if context:
        payload["context"] = context

    if command is not None:
        kind = "resume"
        if pending is not None or graph_id in ("support", "supply"):
            if set(command) != {"resume"} or not isinstance(command.get("resume"), dict):
                raise http_error(422, "invalid_command", 'an approval is resumed with command={"resume": DECISION}')
            resume = command["resume"]
            # the pack's approval rules, before an idempotent replay can answer
            refused = decider_refusal(approval_rules(runtime, graph_id), role=principal.role, reviewer=principal.user_id,
                                      requester=thread.get("requester"))
            if refused is not None:
                raise http_error(refused.http_status, refused.code, refused.message)
            plan_hash = resume.get("plan_hash")
            if isinstance(plan_hash, str):
                prior = queue.get_decision(tid, plan_hash)
                if prior is not None:
                    return _replay_decision(queue, principal, thread, prior, resume)
            if pending is None:
                raise http_error(409, "not_pending", "no approval is pending on this thread")
            try:
                value = validate_resume(runtime, tid, principal, resume, graph_id)
            except ApprovalError as e:
                raise http_error(e.http_status, e.code, e.message) from None
            payload["command"] = {"resume": value}
            decision = {"plan_hash": value["plan_hash"], "decision": value["decision"], "reviewer": principal.user_id,
                        "fingerprint": _fingerprint(value)}
        else:  # a plain interrupt of any graph (LangGraph's own command semantics)
            refused = interrupt_resume_refusal(runtime, principal, thread.get("requester"))
            if refused is not None:
                raise http_error(refused.http_status, refused.code, refused.message)
            if "resume" in command and thread["status"] in ("idle", "error"):
                raise http_error(409, "not_interrupted", "the thread is not waiting at an interrupt; nothing to resume")
            payload["command"] = {k: jsonable(v) for k, v in command.items()}
    else:
        if principal.role not in START_ROLES:
            raise http_error(403, "forbidden", f"starting runs requires role {' or '.join(START_ROLES)}")
        if pending is not None:
            raise http_error(409, "awaiting_approval", "the thread waits for a plan approval; approve or reject it first")
        if checkpoint_id is not None:
            kind = "replay"
            payload["checkpoint_id"] = checkpoint_id
        else:
            kind = "input"
            if input is not None or not _paused(runtime, thread, graph_id):
                _check_ticket(graph_id, input, principal)
            payload["input"] = input  # None on a paused thread: go on from where it stopped
    # a new run (input, replay) is counted against the daily quotas: 429 when one is spent;
    # a resume is not (a reviewer must be able to finish a run already admitted)
    with admitted(runtime, principal) if kind != "resume" else nullcontext():
        try:
            run = queue.create_run(
                principal.tenant,
                tid,
                assistant_id=aid,
                graph_id=graph_id,
                kind=kind,
                payload=payload,
                created_by=principal.user_id,
                correlation_id=correlation_id,
                stream_mode=stream_mode,
                metadata=metadata,
                multitask_strategy=multitask_strategy,
                max_retries=_max_retries(runtime),
                after_seconds=after_seconds,
                set_requester=kind == "input",
                decision=decision,
                run_id=run_id,
            )
        except ThreadBusy:
            raise http_error(
                409, "thread_busy", "Thread is already running a task. Wait for it to finish or choose a different multitask strategy."
            ) from None
        except NotFound:
            raise http_error(404, "thread_not_found", f"thread {tid} not found") from None
        except IntegrityError:
            prior = queue.get_decision(tid, decision["plan_hash"]) if decision else None
            if prior is None:
                raise http_error(409, "conflict", "conflicting concurrent request; retry") from None
            return _replay_decision(queue, principal, thread, prior, command["resume"])  # type: ignore[index]
    if kind == "resume" and decision is not None:
        _audit_decision(runtime, principal, thread, decision, correlation_id, run["run_id"])
    return run, False


def _replay_decision(queue: RunQueue, principal: Principal, thread: dict[str, Any], prior: dict[str, Any],
                     resume: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Idempotency: the same reviewer repeating the same decision gets the original run."""
    if prior["reviewer"] == principal.user_id and prior["fingerprint"] == _fingerprint(resume):
        run = queue.get_run(principal.tenant, thread["thread_id"], prior["run_id"])
        if run is not None:
            return run, True
    raise http_error(409, "already_decided", f"this plan was already decided ({prior['decision']}) by {prior['reviewer']}")


def _audit_decision(runtime: Runtime, principal: Principal, thread: dict[str, Any], decision: dict[str, Any],
                    correlation_id: str, run_id: str) -> None:
    try:
        runtime.audit.append(
            principal.tenant, "approval", actor=principal.user_id, thread_id=thread["thread_id"],
            correlation_id=correlation_id,
            data={"event": "decision_accepted", "decision": decision["decision"], "plan_hash": decision["plan_hash"],
                  "run_id": run_id, "via": "api"},
        )
    except Exception:  # the graph's own approval row is the authoritative one
        log.warning("could not audit approval decision", exc_info=True)


def _max_retries(runtime: Runtime) -> int:
    try:
        return int(runtime.policy.budgets.max_retries)
    except Exception:
        return 2


# -- admission: the daily quotas, before anything is queued (engine.admission) ----------------
def _quota_refused(principal: Principal, refusal: QuotaRefusal) -> HTTPException:
    """The 429 of a spent quota: ``Retry-After`` until it frees, code ``tenant_quota_exceeded``
    or ``user_quota_exceeded``, and a reason naming the quota."""
    metrics.admission_refused(principal.tenant, refusal.scope, refusal.quota)
    return http_error(429, f"{refusal.scope}_quota_exceeded", refusal.message(),
                      headers={"Retry-After": str(refusal.retry_after_s)})


@contextmanager
def _as_429(principal: Principal) -> Iterator[None]:
    try:
        yield
    except QuotaExceeded as e:
        raise _quota_refused(principal, e.refusal) from None


def check_admission(runtime: Runtime, principal: Principal) -> None:
    """429 if a new run of ``principal`` would be refused by a daily quota (tenant's or user's).

    A read only: routes that create a thread for the run (tickets, stateless runs,
    ``if_not_exists``, forks) call it first, so a refused request stores nothing. The
    count itself is taken by :func:`admitted` in :func:`submit_run`.
    """
    with _as_429(principal):
        admission.check_admission(runtime, principal)


@contextmanager
def admitted(runtime: Runtime, principal: Principal) -> Iterator[None]:
    """:func:`engine.admission.admitted`, refused as a 429."""
    with _as_429(principal), admission.admitted(runtime, principal):
        yield


# -- waiting for runs ------------------------------------------------------------------------
def wait_result(runtime: Runtime, queue: RunQueue, run: dict[str, Any]) -> dict[str, Any]:
    """What ``runs.wait``/``runs.join`` return: the thread's values (with ``__interrupt__``
    when it waits), or ``{"__error__": …}`` for a failed or dead run."""
    if run["status"] in ("error", "dead", "timeout"):
        name, _, msg = (run["error"] or "error: run failed").partition(": ")
        return {"__error__": {"error": name if run["status"] != "dead" else "DeadLetter", "message": msg or name,
                              "status": run["status"]}}
    # the run row names its thread and graph (a thread's graph is its first run's, and a run
    # of another graph is refused): no read of the thread row; a deleted thread takes its runs
    # with it in one transaction, so a fresh run row means the thread was there
    snap = _snapshot(runtime, {"thread_id": run["thread_id"], "graph_id": run.get("graph_id")})
    if snap is None:
        return {}
    out = jsonable(snap.values)
    if not isinstance(out, dict):
        out = {"values": out}
    ints = _interrupts(snap)
    if ints:
        out["__interrupt__"] = ints
    return out


LISTENER_CHECK_S = 1.0
"""How often one task per event loop looks (in memory) whether the queue's listener still
runs while requests wait; if it stopped, it wakes them, and they poll until it is back."""
LISTENING_READ_S = 60.0
"""While the listener runs, the longest a waiter goes without reading its run's row: a guard
against a notification lost without the listener noticing; a run's end is otherwise read
when its NOTIFY arrives."""


class _ListenerWatch:
    """The waiters of one queue on one event loop, and the task that wakes them all when the
    queue's listener stops (its ``listening`` turns false): notifications sent while it is
    away are lost, so they must poll. One timer a second per process instead of one per
    waiter; the task is cancelled when no request waits (and starts again with the next)."""

    def __init__(self, queue: RunQueue) -> None:
        self.queue = queue
        self.events: set[asyncio.Event] = set()
        self.task: asyncio.Task[None] | None = None

    def add(self, event: asyncio.Event) -> None:
        self.events.add(event)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self.events:
            await asyncio.sleep(LISTENER_CHECK_S)
            if not self.queue.listening:
                for ev in list(self.events):
                    ev.set()


_watches: dict[tuple[int, int], _ListenerWatch] = {}
"""``(id(queue), id(loop))`` → its watch; entries go when their last waiter does."""


@contextmanager
def _watched(queue: RunQueue, event: asyncio.Event) -> Iterator[None]:
    key = (id(queue), id(asyncio.get_running_loop()))
    watch = _watches.get(key)
    if watch is None:
        watch = _watches[key] = _ListenerWatch(queue)
    watch.add(event)
    try:
        yield
    finally:
        watch.events.discard(event)
        if not watch.events:
            if watch.task is not None:
                watch.task.cancel()
            if _watches.get(key) is watch:
                del _watches[key]


async def _woken(event: asyncio.Event, timeout: float) -> bool:
    """Whether ``event`` was set within ``timeout`` seconds (``asyncio.timeout``: no task is
    created per wait, unlike ``asyncio.wait_for``)."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _ended(queue: RunQueue, run: dict[str, Any], then: Callable[[dict[str, Any]], Any] | None) -> tuple[bool, Any]:
    """In a worker thread: ``(True, then(row))`` if the run ended (or is gone: ``(True, None)``),
    else ``(False, status)``: the read of the row and what the caller makes of it in one hand-off."""
    row = queue.get_run(run["tenant"], run["thread_id"], run["run_id"])
    if row is None:
        return True, None
    if row["status"] in TERMINAL:
        return True, then(row) if then is not None else row
    return False, row["status"]


def _final(queue: RunQueue, run: dict[str, Any], then: Callable[[dict[str, Any]], Any] | None) -> Any:
    """In a worker thread: the run's row (ended, or still in flight at a timeout), or ``then(row)``."""
    row = queue.get_run(run["tenant"], run["thread_id"], run["run_id"])
    return then(row) if then is not None and row is not None else row


async def await_run(queue: RunQueue, run: dict[str, Any], timeout: float | None = None, poll_s: float = 0.05, *,
                    then: Callable[[dict[str, Any]], Any] | None = None,
                    registered: asyncio.Event | None = None) -> Any:
    """Wait until the run is terminal; returns the fresh row (still in flight after ``timeout``),
    or ``then(row)`` computed in the same worker-thread hand-off as the row's read.

    Woken by the queue's notification that the run ended (LISTEN/NOTIFY across processes on
    Postgres, in-process otherwise). The waiter registers before its first read, so an end
    committed after that read wakes it; ``registered``: the caller's ``queue.done_event`` of
    the run, entered before the run was created, so no first read is needed. While this
    process's listener runs, a waiting request costs nothing until its run's NOTIFY arrives
    (no query, no timer but one per :data:`LISTENING_READ_S`): if the listener stops,
    :class:`_ListenerWatch` wakes the waiters within :data:`LISTENER_CHECK_S`, and the
    listener wakes them all again when it is back (what ended meanwhile was not notified).
    Without the listener (SQLite, or Postgres while it reconnects) the row's status is
    polled every ``poll_s`` (faster at first)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    rid = run["run_id"]
    with nullcontext(registered) if registered is not None else queue.done_event(rid) as done, _watched(queue, done):
        if registered is not None:
            status = run["status"]  # read when the run was created, after the waiter registered
        else:
            status = await to_thread.run_sync(queue.run_status, rid)
        delay = 0.005
        read_at = time.monotonic()
        while status not in TERMINAL and status is not None:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                break
            listening = queue.listening
            if listening:
                wait = read_at + LISTENING_READ_S - now
            else:
                wait, delay = delay, min(poll_s, delay * 2)
            if deadline is not None:
                wait = min(wait, deadline - now)
            woke = await _woken(done, max(0.0, wait))
            done.clear()
            if listening and woke:  # most likely its end: read the whole row (and ``then``) at once
                ended, out = await to_thread.run_sync(_ended, queue, run, then)
                if ended:
                    return out
                status = out
            else:
                status = await to_thread.run_sync(queue.run_status, rid)
            read_at = time.monotonic()
    return await to_thread.run_sync(_final, queue, run, then)
