"""Writing a thread's state from outside a run (LangGraph's ``update_state``), and copying a
thread: what may be written, and how.

A direct state write is how LangGraph Studio edits a thread, and how a graph paused by
``interrupt_before``/``interrupt_after`` is steered. On a graph with keel's approval block
it must never stand in for what only a run may decide, so :func:`refusal` refuses (403):

* writing a protected field (:data:`PROTECTED_FIELDS`: the ticket and who asked, the plan,
  the policy outcome, the approval and its decisions, results, status, actions, budget);
* writing "as" a node at or after the policy gate (:data:`GATE_NODES`), or without naming a
  node (LangGraph would then pick the last node that ran, possibly past the gate): the
  graph would go on from there, past the checks the plan has not been through;
* any write while a plan approval is pending (it would change what the reviewer decides).

A graph without the approval block (no plan/approval/policy channel) takes any write, as
on LangGraph Server. Every write is audited by the route with its author.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.queue import NotCancellable

__all__ = ["PROTECTED_FIELDS", "GATE_NODES", "Refusal", "guarded", "refusal", "copy_thread_checkpoints",
           "cancel_thread_runs"]

PROTECTED_FIELDS = frozenset({
    "ticket", "thread_id", "requester", "correlation_id", "plan", "policy", "approval", "decisions", "results",
    "verification", "budget", "status", "actions", "reason_codes",
})
"""State fields that only the graph's own nodes write on a graph with the approval block."""

GATE_NODES = ("policy_check",)
"""The policy gate: a write may be made only as a node from which the graph still reaches it."""

COPY = "__copy__"
"""LangGraph's ``as_node`` that copies a checkpoint unchanged (Studio's "Re-run from here" writes it)."""

_BLOCK_CHANNELS = frozenset({"plan", "approval", "policy"})
"""Channels that mark keel's approval block in a graph's state."""


@dataclass(frozen=True)
class Refusal:
    """Why a state write is refused (HTTP status, code, message)."""

    status: int
    code: str
    message: str


def guarded(graph: Any) -> bool:
    """Whether the compiled graph carries keel's approval block."""
    return bool(_BLOCK_CHANNELS & set(getattr(graph, "channels", {}) or {}))


def _upstream_of_gate(graph: Any) -> set[str]:
    """Nodes from which a gate is reachable and which no gate reaches (strictly before it)."""
    drawable = graph.get_graph()
    succ: dict[str, set[str]] = {}
    pred: dict[str, set[str]] = {}
    for e in drawable.edges:
        succ.setdefault(e.source, set()).add(e.target)
        pred.setdefault(e.target, set()).add(e.source)

    def reach(starts: list[str], edges: dict[str, set[str]]) -> set[str]:
        seen: set[str] = set()
        todo = deque(starts)
        while todo:
            n = todo.popleft()
            for m in edges.get(n, ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    gates = [g for g in GATE_NODES if g in drawable.nodes]
    if not gates:
        return set()
    before = reach(gates, pred)
    after = reach(gates, succ) | set(gates)
    return {n for n in before - after if n in graph.nodes and not n.startswith("__")}


def refusal(graph: Any, values: Any, as_node: str | None, pending: bool) -> Refusal | None:
    """Why writing ``values`` as ``as_node`` to a thread of ``graph`` is refused, or None."""
    if as_node == COPY and values:
        return Refusal(422, "invalid_state_update", "as_node __copy__ copies a checkpoint as it is: send no values")
    if as_node is not None and as_node != COPY and as_node not in graph.nodes:
        return Refusal(422, "unknown_node", f"as_node {as_node!r} is not a node of this graph")
    if not guarded(graph):
        return None
    if pending:
        return Refusal(403, "state_update_refused", "a plan approval is pending on this thread: a state write would "
                       "change what the reviewer decides; approve or reject it first")
    fields = sorted(PROTECTED_FIELDS & set(values)) if isinstance(values, dict) else []
    if fields:
        return Refusal(403, "state_update_refused", f"fields {fields} are written only by the graph's own nodes (plan, "
                       "policy outcome, approval); start a run instead")
    allowed = _upstream_of_gate(graph)
    if as_node not in allowed:
        names = ", ".join(sorted(allowed)) or "none"
        return Refusal(403, "state_update_refused", f"on this graph a state write must name as_node before the policy "
                       f"check ({names}): the run would otherwise go on past checks the plan has not been through")
    return None


# LangGraph's pending-write channels for resume values, interrupts and errors: not copied
_NOT_COPIED = ("__resume__", "__interrupt__", "__error__")


def copy_thread_checkpoints(saver: Any, source_thread_id: str, target_thread_id: str) -> int:
    """Copy a thread's checkpoint history (root namespace, oldest first, parents kept) to
    another thread; the latest checkpoint's pending task writes come along, minus resume,
    interrupt and error writes. Returns how many checkpoints were copied."""
    tuples = list(saver.list({"configurable": {"thread_id": source_thread_id, "checkpoint_ns": ""}}))[::-1]
    parent: str | None = None
    new_cfg: Any = None
    for tup in tuples:
        conf: dict[str, Any] = {"thread_id": target_thread_id, "checkpoint_ns": ""}
        if parent is not None:
            conf["checkpoint_id"] = parent
        new_cfg = saver.put({"configurable": conf}, tup.checkpoint, {**(tup.metadata or {}), "copied_from": source_thread_id},
                            dict(tup.checkpoint.get("channel_versions", {})))
        parent = new_cfg["configurable"]["checkpoint_id"]
    if tuples and new_cfg is not None:
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in tuples[-1].pending_writes or ():
            if channel not in _NOT_COPIED:
                by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            saver.put_writes(new_cfg, writes, task_id)
    return len(tuples)



def cancel_thread_runs(queue: Any, tenant: str, thread_id: str, *, timeout_s: float = 30.0) -> None:
    """Cancel the thread's pending and running runs and wait until none is in flight (a
    running one stops after its current step; past ``timeout_s`` the caller's delete finds
    the thread still busy). Raises ``NotCancellable`` before cancelling anything when one
    of them applies an approved plan a worker has started (it runs to its end)."""
    active = [r for status in ("running", "pending") for r in queue.list_runs(tenant, thread_id, limit=1000, status=status)]
    with queue.db.transaction() as tx:
        started = [r["run_id"] for r in active if r["status"] == "running" or r["attempts"] > 0]
        if started and queue._applies_decision(tx, thread_id, started):
            raise NotCancellable(thread_id)
    for r in active:
        queue.cancel_run(tenant, thread_id, r["run_id"])
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if all(queue.run_status(r["run_id"]) not in ("pending", "running") for r in active):
            return
        time.sleep(delay)
        delay = min(0.25, delay * 2)
