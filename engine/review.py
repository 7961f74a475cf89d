"""The review desk: escalations, deadlines, webhooks and feedback wired to a runtime, and the
two places the worker calls into them.

* :func:`review_desk` — the stores of one runtime (tables created on first use, once per
  database): ``desk.escalations``, ``desk.deadlines``, ``desk.webhooks``, ``desk.feedback``.
  The API routes and the review console use these.
* :func:`after_run` — called by the worker right after it recorded a run's outcome: a
  plan approval gets its deadline and a ``run.awaiting_approval`` webhook; an escalated,
  completed or rejected run its webhook; a reviewer's decision its feedback example.
* :func:`after_dead_letter` — the ``run.dead_lettered`` webhook.
* :func:`sweep` — called periodically by every worker (``keel worker`` and the embedded
  one): applies expired approval deadlines (exactly once each) and delivers due webhooks.

Each hook is best-effort: its failure is logged and never fails the run it follows (the
run's outcome is already committed). Outbox rows are keyed by event id, so calling a hook
twice for one outcome (a retried finish) emits once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

from engine.deadlines import Deadline, DeadlineStore
from engine.escalations import Escalation, EscalationStore
from engine.feedback import FeedbackStore, example_from_decision, example_from_resolution
from engine.jsonable import jsonable
from engine.queue import RunQueue
from engine.queue.base import ThreadBusy
from engine.runtime import Runtime
from engine.webhooks import DeliveryPolicy, WebhookStore, deliver_due
from keel.audit import canonical_json
from keel.db import IntegrityError

__all__ = ["ReviewDesk", "SweepReport", "review_desk", "after_run", "after_dead_letter", "sweep", "apply_deadline",
           "state_reader", "record_decision"]

log = logging.getLogger("keel.review")

SYSTEM = "system"
"""The actor of keel's own decisions (deadlines)."""


@dataclass(frozen=True)
class ReviewDesk:
    """The human-in-the-loop stores of one runtime."""

    escalations: EscalationStore
    deadlines: DeadlineStore
    webhooks: WebhookStore
    feedback: FeedbackStore
    delivery: DeliveryPolicy
    """How webhooks are retried (``KEEL_WEBHOOK_*``)."""


_DESKS: weakref.WeakKeyDictionary[Runtime, ReviewDesk] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def state_reader(runtime: Runtime) -> Any:
    """``state_of(graph_id, thread_id)``: a thread's latest state values from the checkpoints."""

    def state_of(graph_id: str, thread_id: str) -> dict[str, Any] | None:
        snap = runtime.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
        return jsonable(dict(snap.values)) if snap is not None and snap.values else None

    return state_of


def review_desk(runtime: Runtime) -> ReviewDesk:
    """The desk of ``runtime``, its tables created on first use."""
    with _LOCK:
        desk = _DESKS.get(runtime)
        if desk is not None:
            return desk
        db = runtime.db
        feedback = FeedbackStore(db).setup()

        def on_resolved(esc: Escalation, actor: str) -> None:
            values = state_reader(runtime)("support", esc.thread_id) or {}
            ex = example_from_resolution(values, tenant=esc.tenant, thread_id=esc.thread_id, actor=actor,
                                         outcome=esc.outcome or "other", resolution=esc.resolution or "")
            if ex is not None:
                feedback.record(ex)

        s = runtime.settings
        desk = ReviewDesk(
            escalations=EscalationStore(db, runtime.audit, on_resolved=on_resolved).setup(),
            deadlines=DeadlineStore(db).setup(),
            webhooks=WebhookStore(db).setup(),
            feedback=feedback,
            delivery=DeliveryPolicy(max_attempts=s.webhook_max_attempts, backoff_base_s=s.webhook_backoff_base_s,
                                    backoff_cap_s=s.webhook_backoff_cap_s, timeout_s=s.webhook_timeout_s),
        )
        _DESKS[runtime] = desk
        return desk


# -- after a run --------------------------------------------------------------------------
def _plan_approval(interrupts: list[dict[str, Any]]) -> dict[str, Any] | None:
    for intr in interrupts or []:
        value = intr.get("value") if isinstance(intr, dict) else None
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


def register_deadline(runtime: Runtime, run: dict[str, Any], interrupts: list[dict[str, Any]]) -> Deadline | None:
    """The approval deadline of a run that stopped at a plan approval, registered *before* the
    run is recorded as finished: whatever its end wakes (a ``runs/wait`` client, a reviewer's
    list, the deadline sweep) must find the deadline already there. None for a run that did
    not stop at an approval, or when registering failed (best-effort like the other hooks:
    :func:`after_run` registers it again)."""
    request = _plan_approval(interrupts)
    if request is None:
        return None
    try:
        return review_desk(runtime).deadlines.register(run["tenant"], run["thread_id"], run["graph_id"],
                                                       request["plan_hash"], runtime.policy.approvals)
    except Exception:  # noqa: BLE001 - the run's outcome stands; after_run tries again
        log.warning("run %s: could not register its approval deadline", run.get("run_id"), exc_info=True)
        return None


def after_run(runtime: Runtime, queue: RunQueue, run: dict[str, Any], thread_status: str,
              interrupts: list[dict[str, Any]], *, values: dict[str, Any] | None = None,
              deadline: Deadline | None = None) -> None:
    """Deadlines, webhooks and feedback for a run whose outcome was just recorded
    (``values``: the thread's final state values when the caller already read them;
    ``deadline``: the one :func:`register_deadline` registered before the run finished)."""
    try:
        _after_run(runtime, run, thread_status, interrupts, values, deadline)
    except Exception:  # noqa: BLE001 - the run's outcome stands; the hook is best-effort
        log.warning("run %s: review hooks failed", run.get("run_id"), exc_info=True)


def _after_run(runtime: Runtime, run: dict[str, Any], thread_status: str, interrupts: list[dict[str, Any]],
               values: dict[str, Any] | None = None, deadline: Deadline | None = None) -> None:
    desk = review_desk(runtime)
    tenant, tid, rid = run["tenant"], run["thread_id"], run["run_id"]
    base = {"thread_id": tid, "run_id": rid, "graph_id": run["graph_id"]}
    request = _plan_approval(interrupts)
    if request is not None:
        d = deadline or desk.deadlines.register(tenant, tid, run["graph_id"], request["plan_hash"],
                                                runtime.policy.approvals)
        desk.webhooks.emit(tenant, "run.awaiting_approval", f"{tid}:{request['plan_hash']}:awaiting_approval",
                           {**base, "plan_hash": request["plan_hash"], "ticket_id": request.get("ticket_id"),
                            "route": request.get("route"), "deadline": d.deadline, "assignee_group": d.assignee_group})
        return
    if thread_status != "idle":
        return
    if values is None:
        values = state_reader(runtime)(run["graph_id"], tid) or {}
    status = values.get("status")
    if status == "escalated":
        desk.webhooks.emit(tenant, "run.escalated", f"{rid}:escalated",
                           {**base, "reason_codes": list(values.get("reason_codes") or []),
                            "ticket_id": (values.get("ticket") or {}).get("id")})
    else:
        desk.webhooks.emit(tenant, "run.completed", f"{rid}:completed",
                           {**base, "status": status or "completed",
                            "ticket_id": (values.get("ticket") or {}).get("id")})
    if run.get("kind") == "resume":
        ex = example_from_decision(values, tenant=tenant, thread_id=tid)
        if ex is not None:
            desk.feedback.record(ex)


def record_decision(runtime: Runtime, tenant: str, thread_id: str, values: dict[str, Any]) -> bool:
    """The feedback example of a reviewer's decision applied outside the queue (``keel
    approve|reject`` resumes the graph in-process); ``values`` is the state after it.
    Best-effort like the worker's hooks; True when an example was stored."""
    try:
        ex = example_from_decision(jsonable(dict(values)), tenant=tenant, thread_id=thread_id)
        return ex is not None and review_desk(runtime).feedback.record(ex)
    except Exception:  # noqa: BLE001 - the decision stands
        log.warning("thread %s: could not record the decision as feedback", thread_id, exc_info=True)
        return False


def after_dead_letter(runtime: Runtime, run: dict[str, Any]) -> None:
    """The ``run.dead_lettered`` webhook of a run that went to the dead letters."""
    try:
        review_desk(runtime).webhooks.emit(
            run["tenant"], "run.dead_lettered", f"{run['run_id']}:dead_lettered",
            {"thread_id": run["thread_id"], "run_id": run["run_id"], "graph_id": run.get("graph_id"),
             "reason": run.get("dead_reason"), "attempts": run.get("attempts")})
    except Exception:  # noqa: BLE001
        log.warning("run %s: dead-letter webhook failed", run.get("run_id"), exc_info=True)


# -- the periodic sweep ----------------------------------------------------------------------
@dataclass(frozen=True)
class SweepReport:
    """What one sweep did."""

    deadlines_applied: int
    deadlines_superseded: int
    webhooks_attempted: int


def _interrupt_node(runtime: Runtime, graph_id: str, thread_id: str, plan_hash: str) -> str | None:
    """The node whose interrupt asks for ``plan_hash`` on the thread, or None if it no longer does."""
    snap = runtime.graph(graph_id).get_state({"configurable": {"thread_id": thread_id}})
    for task in getattr(snap, "tasks", ()) or ():
        for intr in getattr(task, "interrupts", ()) or ():
            v = intr.value
            if isinstance(v, dict) and v.get("type") == "plan_approval" and v.get("plan_hash") == plan_hash:
                return task.name
    return None


def apply_deadline(runtime: Runtime, queue: RunQueue, d: Deadline) -> str | None:
    """Apply the pack's default to one claimed, expired deadline; the queued run's id, or
    None when a reviewer decided first (or the plan is no longer pending).

    The system's decision goes the way a reviewer's does: a resume run on the thread,
    recorded in ``api_decisions`` in the same transaction, so of a reviewer and the deadline
    deciding at once exactly one is applied. ``reject`` resumes the approval with reviewer
    ``system`` and reason ``deadline_passed``; ``escalate`` records the approval node's
    outcome as escalated (``deadline_passed``) and the run goes on to ``escalate_to_human``.
    """
    desk = review_desk(runtime)
    th = queue.get_thread(d.tenant, d.thread_id)
    node = _interrupt_node(runtime, d.graph_id, d.thread_id, d.plan_hash) if th and th["status"] == "interrupted" else None
    if node is None:
        desk.deadlines.settle(d, "superseded")
        return None
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    approval = {"decision": d.on_deadline, "reviewer": SYSTEM, "reviewer_role": None, "reviewer_verified": True,
                "reason": "deadline_passed", "plan_hash": d.plan_hash, "edited": False, "at": now,
                "deadline": d.deadline, "assignee_group": d.assignee_group}
    if d.on_deadline == "reject":
        command: dict[str, Any] = {"resume": {"decision": "reject", "plan_hash": d.plan_hash, "reviewer": SYSTEM,
                                              "reason": "deadline_passed"}}
    else:
        command = {"update": {"status": "escalated", "reason_codes": ["deadline_passed"], "approval": approval},
                   "as_node": node}
    last = runtime.db.fetchone("SELECT assistant_id FROM api_runs WHERE thread_id = ? ORDER BY created_at DESC LIMIT 1",
                               (d.thread_id,))
    cid = uuid.uuid4().hex
    decision = {"plan_hash": d.plan_hash, "decision": d.on_deadline, "reviewer": SYSTEM,
                "fingerprint": hashlib.sha256(canonical_json({"decision": d.on_deadline, "edits": []}).encode()).hexdigest()}
    try:
        run = queue.create_run(d.tenant, d.thread_id, assistant_id=last["assistant_id"] if last else d.graph_id,
                               graph_id=d.graph_id, kind="resume", payload={"config": {}, "command": command},
                               created_by=SYSTEM, correlation_id=cid, stream_mode=["values"],
                               max_retries=runtime.policy.budgets.max_retries, decision=decision)
    except (ThreadBusy, IntegrityError):  # a reviewer's decision is queued or running: theirs stands
        desk.deadlines.settle(d, "superseded")
        return None
    desk.deadlines.settle(d, "applied", run["run_id"])
    runtime.audit.append(d.tenant, "approval", actor=SYSTEM, thread_id=d.thread_id, correlation_id=cid,
                         data={"event": "deadline_passed", "decision": d.on_deadline, "plan_hash": d.plan_hash,
                               "deadline": d.deadline, "assignee_group": d.assignee_group, "run_id": run["run_id"]})
    return run["run_id"]


def _backfill_resolutions(runtime: Runtime, desk: ReviewDesk, limit: int = 20) -> int:
    """Feedback examples of resolutions stored by a path that did not record one (a store
    built without ``on_resolved``, a crash in between); the feedback key keeps it once."""
    rows = runtime.db.fetchone("SELECT COUNT(*) AS n FROM escalations e WHERE e.state = 'resolved' AND NOT EXISTS"
                               " (SELECT 1 FROM feedback f WHERE f.thread_id = e.thread_id AND f.kind = 'escalation')")
    if not rows or not rows["n"]:
        return 0
    with runtime.db.transaction() as tx:
        todo = tx.fetchall("SELECT thread_id, tenant, resolved_by, outcome, resolution FROM escalations e"
                           " WHERE e.state = 'resolved' AND NOT EXISTS (SELECT 1 FROM feedback f WHERE"
                           " f.thread_id = e.thread_id AND f.kind = 'escalation') ORDER BY resolved_at LIMIT ?", (limit,))
    done = 0
    for r in todo:
        values = state_reader(runtime)("support", r["thread_id"]) or {}
        ex = example_from_resolution(values, tenant=r["tenant"], thread_id=r["thread_id"],
                                     actor=r["resolved_by"] or SYSTEM, outcome=r["outcome"] or "other",
                                     resolution=r["resolution"] or "")
        if ex is not None:
            done += desk.feedback.record(ex)
    return done


def sweep(runtime: Runtime, queue: RunQueue, worker_id: str, *, now: float | None = None) -> SweepReport:
    """One pass of the periodic work: expired approval deadlines, then due webhooks."""
    desk = review_desk(runtime)
    applied = superseded = 0
    desk.deadlines.release_stale()  # a worker died between claiming a deadline and applying it
    for d in desk.deadlines.claim_expired(worker_id, now=now):
        try:
            if apply_deadline(runtime, queue, d) is None:
                superseded += 1
            else:
                applied += 1
        except Exception:  # noqa: BLE001 - put it back for the next sweep
            log.warning("deadline of thread %s: could not apply", d.thread_id, exc_info=True)
            runtime.db.execute("UPDATE approval_deadlines SET state = 'pending', claimed_by = NULL WHERE thread_id = ?"
                               " AND plan_hash = ? AND state = 'applying'", (d.thread_id, d.plan_hash))
    attempted = deliver_due(desk.webhooks, worker_id, desk.delivery)
    _backfill_resolutions(runtime, desk)
    return SweepReport(deadlines_applied=applied, deadlines_superseded=superseded, webhooks_attempted=attempted)
