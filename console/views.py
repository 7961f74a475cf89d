"""What the console's pages show, shaped from what the API's functions return (pure code).

The queue's rows, their risk label, sort and filter; the detail page's sections. Nothing
here reads a store: :mod:`console.app` fetches through the API's own functions, so the
console shows exactly what ``/approvals`` says and decides through the same path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

from guards.dlp import redact

__all__ = ["FieldChange", "before_after", "QueueFilter", "QueueRow", "RISKS", "SORTS", "queue_rows", "risk_of", "plan_amount", "age_text",
           "recorded_request", "amount_fields", "pretty", "until_text"]

RISKS = ("high", "medium", "low")
"""Risk labels, most urgent first."""
SORTS = ("age", "amount", "risk", "route", "deadline")
"""Columns the queue sorts by."""
_SENSITIVE_TOOLS = frozenset({"issue_refund", "cancel_subscription", "change_email", "reset_mfa", "send_password_reset",
                              "unlock_account", "update_shipping_address"})
"""Tools that move money or change who controls an account: a plan using one is at least ``medium``."""


def plan_amount(plan: list[dict[str, Any]] | None) -> int:
    """Total cents a plan would move (0 when no action names an amount)."""
    total = 0
    for action in plan or []:
        amount = (action.get("args") or {}).get("amount_cents")
        if isinstance(amount, int) and not isinstance(amount, bool):
            total += amount
    return total


def risk_of(request: dict[str, Any]) -> str:
    """``high`` when the injection screen flagged the ticket, a policy check did not pass or the
    last decision was refused; ``medium`` when the plan moves money or changes an account;
    ``low`` otherwise. A triage aid for sorting the queue, never a decision."""
    injection = request.get("injection") or {}
    checks = request.get("policy_checks") or []
    if injection.get("flagged") or request.get("error") or any(c.get("result") not in ("pass", None) for c in checks):
        return "high"
    if plan_amount(request.get("plan")) > 0 or any(a.get("tool") in _SENSITIVE_TOOLS for a in request.get("plan") or []):
        return "medium"
    return "low"


def age_text(since: str | None, now: datetime | None = None) -> str:
    """``5m``, ``2h 10m``, ``3d 4h``: how long a plan has been waiting."""
    if not since:
        return ""
    try:
        t = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    s = max(0, int(((now or datetime.now(UTC)) - t).total_seconds()))
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m" if m else f"{s}s"


def until_text(deadline: str | None, now: datetime | None = None) -> str:
    """``in 3h 59m`` or ``overdue 5m``: how long until a deadline (ISO-8601)."""
    if not deadline:
        return ""
    try:
        t = datetime.fromisoformat(deadline.replace("Z", "+00:00"))
    except ValueError:
        return deadline
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    if t >= now:
        return "in " + age_text(now.isoformat(), t)
    return "overdue " + age_text(t.isoformat(), now)


def recorded_request(thread: dict[str, Any]) -> dict[str, Any] | None:
    """The plan-approval interrupt the worker recorded on the thread row, if any."""
    raw = thread.get("interrupts")
    if not raw:
        return None
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return None
    for intr in items if isinstance(items, list) else []:
        value = intr.get("value") if isinstance(intr, dict) else None
        if isinstance(value, dict) and value.get("type") == "plan_approval":
            return value
    return None


@dataclass(frozen=True)
class QueueRow:
    """One pending approval as the queue shows it."""

    thread_id: str
    ticket_id: str
    workflow: str
    route: str
    risk: str
    amount_cents: int
    requester: str
    waiting_since: str
    age: str
    deadline: str
    can_decide: bool
    refusal: str


@dataclass(frozen=True)
class QueueFilter:
    """The queue's sort and filters (from the query string; unknown values fall back)."""

    sort: str = "age"
    desc: bool = False
    route: str = ""
    risk: str = ""
    workflow: str = ""
    q: str = ""
    decidable: bool = False

    @classmethod
    def parse(cls, params: dict[str, str]) -> QueueFilter:
        """From query parameters; anything unknown means "no filter", never an error."""
        sort = params.get("sort", "age")
        risk = params.get("risk", "")
        return cls(sort=sort if sort in SORTS else "age", desc=params.get("order") == "desc",
                   route=params.get("route", "")[:64], risk=risk if risk in RISKS else "",
                   workflow=params.get("workflow", "")[:64], q=params.get("q", "")[:128].strip(),
                   decidable=params.get("decidable") in ("1", "on", "true"))


def _row(item: dict[str, Any], thread: dict[str, Any] | None, now: datetime) -> QueueRow:
    req = (recorded_request(thread) if thread else None) or item
    refusal = item.get("refusal") or {}
    return QueueRow(
        thread_id=item["thread_id"], ticket_id=str(item.get("ticket_id") or ""),
        workflow=str((thread or {}).get("graph_id") or item.get("graph_id") or ""),
        route=str(item.get("route") or ""), risk=risk_of(req), amount_cents=plan_amount(item.get("plan")),
        requester=str(item.get("requester") or ""), waiting_since=str(item.get("waiting_since") or ""),
        age=age_text(item.get("waiting_since"), now), deadline=str(item.get("deadline") or ""),
        can_decide=bool(item.get("can_decide")), refusal=str(refusal.get("detail") or ""),
    )


def queue_rows(items: list[dict[str, Any]], threads: dict[str, dict[str, Any]], f: QueueFilter,
               now: datetime | None = None) -> list[QueueRow]:
    """The listing's items as rows, filtered and sorted as asked."""
    now = now or datetime.now(UTC)
    rows = [_row(i, threads.get(i["thread_id"]), now) for i in items]
    q = f.q.lower()
    rows = [r for r in rows
            if (not f.route or r.route == f.route) and (not f.risk or r.risk == f.risk)
            and (not f.workflow or r.workflow == f.workflow) and (not f.decidable or r.can_decide)
            and (not q or q in r.ticket_id.lower() or q in r.requester.lower() or q in r.thread_id)]
    keys = {
        "age": lambda r: r.waiting_since,
        "amount": lambda r: r.amount_cents,
        "risk": lambda r: RISKS.index(r.risk),
        "route": lambda r: r.route,
        "deadline": lambda r: r.deadline or "9999",
    }
    # "age" ascending = oldest first (longest waiting); risk ascending = most urgent first
    return sorted(rows, key=keys[f.sort], reverse=f.desc)


def amount_fields(plan: list[dict[str, Any]] | None) -> list[tuple[int, str, int]]:
    """The plan's editable amounts: (action index, tool, current cents)."""
    out = []
    for i, action in enumerate(plan or []):
        amount = (action.get("args") or {}).get("amount_cents")
        if isinstance(amount, int) and not isinstance(amount, bool):
            out.append((i, str(action.get("tool")), amount))
    return out


def pretty(value: Any) -> str:
    """Indented JSON of a DLP-redacted value, for the page's ``<pre>`` blocks."""
    return json.dumps(redact(value), indent=2, sort_keys=True, default=str)


@dataclass(frozen=True)
class FieldChange:
    """One field of one record an action would change."""

    record: str
    field: str
    before: Any
    after: Any


def before_after(item: dict[str, Any]) -> list[FieldChange]:
    """The field-level changes of one preview item.

    A preview that already says ``before``/``after`` per record (the tools' own preview) is
    shown as it is; otherwise the change is derived from the records the approval listing
    read: a refund raises the order's ``refunded_cents``, and any argument naming a field of
    a current record (``status``, ``email``, ...) replaces that field's value."""
    out: list[FieldChange] = []
    before, after = item.get("before"), item.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        for rec in sorted(set(before) | set(after)):
            b, a = before.get(rec), after.get(rec)
            if isinstance(b, dict) or isinstance(a, dict):
                b, a = b or {}, a or {}
                out += [FieldChange(rec, k, b.get(k), a.get(k)) for k in sorted(set(b) | set(a)) if b.get(k) != a.get(k)]
            elif b != a:
                out.append(FieldChange(rec, "", b, a))
        return out
    change = item.get("change") or {}
    current = item.get("current") or {}
    order = current.get("order")
    if item.get("tool") == "issue_refund" and isinstance(order, dict) and isinstance(change.get("amount_cents"), int):
        was = int(order.get("refunded_cents") or 0)
        out.append(FieldChange(f"order {order.get('id')}", "refunded_cents", was, was + change["amount_cents"]))
    for name, rec in current.items():
        if not isinstance(rec, dict):
            continue
        for k, v in change.items():
            target = k.removeprefix("new_")
            if target in rec and target != "id" and rec[target] != v:
                out.append(FieldChange(f"{name} {rec.get('id', '')}".strip(), target, rec[target], v))
    if item.get("tool") == "cancel_subscription" and isinstance(current.get("subscription"), dict):
        sub = current["subscription"]
        if sub.get("status") != "cancelled":
            out.append(FieldChange(f"subscription {sub.get('id')}", "status", sub.get("status"), "cancelled"))
    return out
