"""Reviewers' decisions as evaluation data: every approve, reject, edit and escalation
resolution becomes a labelled example, exportable as a golden set ``keel eval`` accepts.

A reviewer who approves a plan says "this ticket should end waiting for approval with this
action"; one who lowers an amount says the right amount; one who rejects says no action
should have been proposed; one who resolves an escalation confirms the run was right to
hand it over. Each is stored (DLP-redacted: ticket, reason and note go through
:func:`guards.dlp.redact`) with the expected row in the golden set's format
(``evals/golden/expected.jsonl``: ticket_id, route, status, tool, decision, amount_cents,
reason_codes, citations, note). :meth:`FeedbackStore.export` writes ``tickets.jsonl``,
``expected.jsonl``, ``fixtures.json`` (the back office the tickets were decided against)
and ``dataset.toml``: a folder ``keel eval`` runs as it is.

Examples are keyed by ``(thread, kind, plan hash)``: recording the same decision twice (a
retried run, a replayed hook) stores it once. System decisions (deadlines) are not labels.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, UTC
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from guards.dlp import redact
from keel.db import Database
from keel.types import Ticket
from tools.registry import side_effect_tools

__all__ = ["FeedbackKind", "Example", "ExportReport", "FeedbackStore", "example_from_decision",
           "example_from_resolution", "main_action"]

FeedbackKind = Literal["approve", "reject", "edit", "escalation"]

LOOKUPS = frozenset({"get_customer", "get_order", "get_account"})
"""Context reads a plan may start with; not its main action."""

_DDL = """
CREATE TABLE IF NOT EXISTS feedback (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  label_key TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT NOT NULL,
  ticket_id TEXT NOT NULL,
  ticket TEXT NOT NULL,
  expected TEXT NOT NULL,
  created_at TEXT NOT NULL,
  UNIQUE (thread_id, kind, label_key)
);
CREATE INDEX IF NOT EXISTS feedback_tenant ON feedback (tenant, created_at)
"""


class Example(BaseModel):
    """One labelled example (redacted)."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    thread_id: str
    kind: FeedbackKind
    actor: str
    """Who decided (the label's author)."""
    reason: str
    """Their reason, redacted."""
    ticket: dict[str, Any]
    """The ticket (batch contract), redacted."""
    expected: dict[str, Any]
    """The expected row (golden-set format)."""
    label_key: str = ""
    """What makes the example unique on its thread (the plan hash)."""
    created_at: str | None = None


class ExportReport(BaseModel):
    """What ``keel feedback export`` wrote."""

    model_config = ConfigDict(frozen=True)

    out: str
    examples: int
    """Tickets written (one per ticket id: the latest label wins)."""
    skipped_other_tenants: int
    """Examples whose tenant is not the fixtures' (the eval runs them against one back office)."""


def main_action(actions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The action a golden row is about: the first side effect, else the first non-lookup
    (the rule :mod:`evals.score` scores by)."""
    for a in actions:
        if a.get("tool") in side_effect_tools():
            return a
    return next((a for a in actions if a.get("tool") not in LOOKUPS), None)


def _amount(action: dict[str, Any] | None) -> int | None:
    args = (action or {}).get("args") or {}
    v = args.get("amount_cents")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _ticket(values: dict[str, Any]) -> dict[str, Any] | None:
    t = values.get("ticket")
    if not isinstance(t, dict):
        return None
    try:
        return Ticket.model_validate({k: t[k] for k in Ticket.model_fields if k in t}).model_dump()
    except Exception:  # noqa: BLE001 - a state without a contract ticket yields no example
        return None


def example_from_decision(values: dict[str, Any], *, tenant: str, thread_id: str) -> Example | None:
    """The example a reviewer's decision on a support run gives, from the thread's state
    after the resumed run (None: no human decision there, or no ticket)."""
    appr = values.get("approval")
    ticket = _ticket(values)
    if not isinstance(appr, dict) or ticket is None or appr.get("reviewer") in (None, "", "system"):
        return None
    actions = [a for a in values.get("actions") or [] if isinstance(a, dict)]
    act = main_action(actions)
    route = values.get("route")
    reason = str(appr.get("reason") or "")
    if appr.get("decision") == "reject":
        kind: FeedbackKind = "reject"
        expected = {"ticket_id": ticket["id"], "route": route, "status": "escalated", "tool": None, "decision": None,
                    "amount_cents": None, "reason_codes": [], "citations": [],
                    "note": f"reviewer {appr.get('reviewer')} rejected the proposed plan: {reason}".strip()}
    else:
        kind = "edit" if appr.get("edited") else "approve"
        per = ((values.get("policy") or {}).get("per_action") or [])
        idx = actions.index(act) if act in actions else -1
        decision = (per[idx].get("decision") if 0 <= idx < len(per) and isinstance(per[idx], dict) else None) or "approve"
        expected = {"ticket_id": ticket["id"], "route": route,
                    "status": "completed" if decision == "execute" else "awaiting_approval",
                    "tool": (act or {}).get("tool"), "decision": decision, "amount_cents": _amount(act),
                    "reason_codes": [], "citations": [],
                    "note": f"reviewer {appr.get('reviewer')} {'edited and approved' if kind == 'edit' else 'approved'}"
                            f" the plan: {reason}".strip()}
    return Example(tenant=tenant, thread_id=thread_id, kind=kind, actor=str(appr["reviewer"]), reason=reason,
                   ticket=ticket, expected=expected, label_key=str(appr.get("plan_hash") or ""))


def example_from_resolution(values: dict[str, Any], *, tenant: str, thread_id: str, actor: str, outcome: str,
                            resolution: str) -> Example | None:
    """The example an escalation's resolution gives: the run was right to escalate, with
    its reason codes and main action (None without a ticket in the state)."""
    ticket = _ticket(values)
    if ticket is None:
        return None
    act = main_action([a for a in values.get("actions") or [] if isinstance(a, dict)])
    expected = {"ticket_id": ticket["id"], "route": values.get("route"), "status": "escalated",
                "tool": (act or {}).get("tool"), "decision": (act or {}).get("decision") if act else None,
                "amount_cents": _amount(act), "reason_codes": sorted(set(values.get("reason_codes") or [])),
                "citations": [], "note": f"escalation resolved by {actor} ({outcome}): {resolution}"}
    return Example(tenant=tenant, thread_id=thread_id, kind="escalation", actor=actor,
                   reason=f"{outcome}: {resolution}", ticket=ticket, expected=expected, label_key="resolution")


class FeedbackStore:
    """Labelled examples from reviewers, in keel's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> FeedbackStore:
        """Create the table (idempotent; once per database on Postgres)."""
        self.db.executescript(_DDL)
        return self

    def record(self, ex: Example) -> bool:
        """Store ``ex`` redacted; False when this label was stored already."""
        ticket, expected, reason = redact(ex.ticket), redact(ex.expected), redact(ex.reason)
        n = self.db.execute(
            "INSERT INTO feedback (id, tenant, thread_id, kind, label_key, actor, reason, ticket_id, ticket, expected,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id, kind, label_key) DO NOTHING",
            (uuid.uuid4().hex, ex.tenant, ex.thread_id, ex.kind, ex.label_key, ex.actor, reason, ticket["id"],
             json.dumps(ticket, ensure_ascii=False), json.dumps(expected, ensure_ascii=False),
             datetime.now(UTC).isoformat().replace("+00:00", "Z")))
        return bool(n)

    def list(self, tenant: str | None = None, *, limit: int = 1000, offset: int = 0) -> list[Example]:
        """Examples (of one tenant, or all), oldest first."""
        sql, params = "SELECT * FROM feedback", []
        if tenant is not None:
            sql += " WHERE tenant = ?"
            params.append(tenant)
        sql += " ORDER BY created_at, id LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, params)
        return [Example(tenant=r["tenant"], thread_id=r["thread_id"], kind=r["kind"], actor=r["actor"],
                        reason=r["reason"], ticket=json.loads(r["ticket"]), expected=json.loads(r["expected"]),
                        label_key=r["label_key"], created_at=r["created_at"]) for r in rows]

    def export(self, out: Path, *, fixtures: Path, now: datetime, name: str = "feedback") -> ExportReport:
        """Write a golden-set folder at ``out`` from the examples of the tenant ``fixtures``
        holds (``keel eval OUT`` runs it): one ticket per id, the latest label winning.

        Raises ValueError with a one-line reason when there is nothing to export."""
        fx = json.loads(fixtures.read_text(encoding="utf-8"))
        tenant = fx.get("tenant") if isinstance(fx, dict) else None
        if not isinstance(tenant, str):
            raise ValueError(f"{fixtures}: not a fixtures file (no tenant)")
        examples = self.list()
        mine = [e for e in examples if e.tenant == tenant]
        latest: dict[str, Example] = {}
        for e in mine:
            latest[e.ticket["id"]] = e
        if not latest:
            raise ValueError(f"no feedback for tenant {tenant!r} yet (approve, reject, edit or resolve some runs first)")
        out.mkdir(parents=True, exist_ok=True)
        rows = list(latest.values())
        (out / "tickets.jsonl").write_text(
            "".join(json.dumps(e.ticket, ensure_ascii=False) + "\n" for e in rows), encoding="utf-8")
        (out / "expected.jsonl").write_text(
            "".join(json.dumps(e.expected, ensure_ascii=False) + "\n" for e in rows), encoding="utf-8")
        shutil.copyfile(fixtures, out / "fixtures.json")
        stamp = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        (out / "dataset.toml").write_text(
            f"# Written by `keel feedback export`: reviewers' decisions as labelled examples.\n"
            f"name = {json.dumps(name)}\nnow = {json.dumps(stamp)}\n"
            f"description = {json.dumps(f'{len(rows)} tickets labelled by reviewers of {tenant}')}\n", encoding="utf-8")
        return ExportReport(out=str(out), examples=len(rows), skipped_other_tenants=len(examples) - len(mine))
