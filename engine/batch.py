"""Running tickets through the support graph: the shared core of ``keel run`` and ``keel demo``."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from collections.abc import Callable, Iterable

from engine.runtime import Runtime
from keel.types import Ticket
from tools.fixtures import LineError, parse_tickets_lines

__all__ = ["result_row", "model_marks", "run_ticket", "run_input", "read_tickets", "BatchReport", "Progress"]

log = logging.getLogger("keel.batch")


def result_row(ticket_id: str, thread_id: str, state: dict[str, Any]) -> dict[str, Any]:
    """One line of the batch output (batch contract), from a run's final state."""
    return {
        "ticket_id": ticket_id,
        "thread_id": thread_id,
        "route": state.get("route", "unknown"),
        "confidence": state.get("confidence", 0.0),
        "status": state.get("status", "escalated"),
        "reason_codes": list(state.get("reason_codes") or []),
        "actions": [
            {"tool": a["tool"], "args": a["args"], "decision": a["decision"], "state": a["state"]}
            for a in state.get("actions") or []
        ],
        "answer": state.get("answer"),
        "citations": list(state.get("citations") or []),
        "degraded": bool(state.get("degraded", False)),
        "models": dict(state.get("models") or {}),
    }


def model_marks(rt: Runtime, tenant: str, thread_id: str) -> dict[str, Any]:
    """``degraded`` and the model that answered each task, from the run's ``model_call``
    audit rows: an output answered by a fallback (the chain's first model failed, timed
    out or had its circuit open) must say so in the batch output."""
    models: dict[str, str] = {}
    degraded = False
    for row in rt.audit.list(tenant, thread_id=thread_id, limit=1000):
        data = row.data
        if row.kind == "model_call" and data.get("ok"):
            models[str(data.get("task"))] = str(data.get("model") or data.get("provider"))
            degraded = degraded or bool(data.get("degraded"))
    return {"degraded": degraded, "models": models}


def run_ticket(rt: Runtime, ticket: Ticket, *, requester: str, thread_id: str | None = None) -> dict[str, Any]:
    """Run one ticket on its own thread through the support graph; returns its batch output row."""
    return run_input(rt, "support", ticket.id, {"ticket": ticket.model_dump()}, requester=requester,
                     thread_id=thread_id)


def run_input(rt: Runtime, graph_id: str, item_id: str, graph_input: dict[str, Any], *, requester: str,
              thread_id: str | None = None) -> dict[str, Any]:
    """Run one input (a ticket, a supply event, …) through graph ``graph_id`` on its own
    thread; returns its batch output row (the same columns for every keel workflow).

    A run that fails inside the graph (a tool that kept failing, say) is reported as
    escalated with ``run_failed``; its checkpoint stays resumable.
    """
    thread_id = thread_id or str(uuid.uuid4())
    config = {"configurable": {"thread_id": thread_id, "requester": requester, "correlation_id": uuid.uuid4().hex}}
    graph = rt.graph(graph_id)
    try:
        state = graph.invoke(graph_input, config, context=rt.context(graph_id))
    except Exception as e:  # report, never crash the batch
        log.warning("%s %s: run failed: %s", graph_id, item_id, type(e).__name__)
        state = {"route": "unknown", "status": "escalated", "reason_codes": ["run_failed"]}
        try:
            snap = graph.get_state(config).values
            state = {**snap, "status": "escalated", "reason_codes": ["run_failed"]}
        except Exception:
            pass
    try:
        tenant = str((graph_input.get("ticket") or graph_input.get("event") or {}).get("tenant") or "")
        if tenant:
            state = {**state, **model_marks(rt, tenant, thread_id)}
    except Exception:  # reporting only: never lose a row over its marks
        log.warning("%s %s: could not read model marks", graph_id, item_id)
    return result_row(item_id, thread_id, state)


@dataclass
class BatchReport:
    """What a batch did, for the exit status and the summary."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    """Output rows in ticket order."""
    errors: list[str] = field(default_factory=list)
    """Malformed input, one message per line."""


Progress = Callable[[int, int, dict[str, Any]], None]
"""Called after each ticket with (done, total, row)."""


def read_tickets(path: Path) -> tuple[list[Ticket], list[str]]:
    """Tickets of a JSON Lines file, and one error message per malformed line."""
    tickets: list[Ticket] = []
    errors: list[str] = []
    with open(path, encoding="utf-8") as f:
        for _line_no, item in parse_tickets_lines(f):
            if isinstance(item, LineError):
                errors.append(f"{path}:{item.line}: {item.message}")
            else:
                tickets.append(item)
    return tickets, errors


def run_tickets(rt: Runtime, tickets: Iterable[Ticket], *, requester: str, out: TextIO | None = None,
                progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run tickets in order, writing each row as JSON to ``out`` as soon as it is done."""
    tickets = list(tickets)
    rows = []
    for i, t in enumerate(tickets, start=1):
        row = run_ticket(rt, t, requester=requester)
        rows.append(row)
        if out is not None:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
        if progress is not None:
            progress(i, len(tickets), row)
    return rows


def stderr_progress(done: int, total: int, row: dict[str, Any]) -> None:
    """Plain progress lines on standard error (never on standard output)."""
    print(f"[{done}/{total}] {row['ticket_id']}: {row['route']} -> {row['status']}", file=sys.stderr, flush=True)
