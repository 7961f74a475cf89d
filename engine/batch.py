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

__all__ = ["result_row", "run_ticket", "read_tickets", "BatchReport", "Progress"]

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
    }


def run_ticket(rt: Runtime, ticket: Ticket, *, requester: str, thread_id: str | None = None) -> dict[str, Any]:
    """Run one ticket on its own thread; returns its batch output row.

    A run that fails inside the graph (a tool that kept failing, say) is reported as
    escalated with ``run_failed``; its checkpoint stays resumable.
    """
    thread_id = thread_id or str(uuid.uuid4())
    config = {"configurable": {"thread_id": thread_id, "requester": requester, "correlation_id": uuid.uuid4().hex}}
    graph = rt.graph("support")
    try:
        state = graph.invoke({"ticket": ticket.model_dump()}, config, context=rt.context("support"))
    except Exception as e:  # report, never crash the batch
        log.warning("ticket %s: run failed: %s", ticket.id, type(e).__name__)
        state = {"route": "unknown", "status": "escalated", "reason_codes": ["run_failed"]}
        try:
            snap = graph.get_state(config).values
            state = {**snap, "status": "escalated", "reason_codes": ["run_failed"]}
        except Exception:
            pass
    return result_row(ticket.id, thread_id, state)


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
