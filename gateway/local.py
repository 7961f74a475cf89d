"""The local provider: deterministic, offline rules standing in for a model.

It is the default and the last fallback, so keel works (and its tests run) with no
network and no key. It reads the ticket with :mod:`gateway.rules` and plans with
the mapping below. It only *proposes*: every action still goes through the guards.
It calls no model, so it costs no tokens: its calls are charged nothing against the
tenant's daily token budget (the run quotas bound how much of it a tenant may use).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.base import ROUTE_OPERATIONS, PlanningInput, Usage
from gateway.rules import (
    READ_ONLY_OPERATIONS,
    analyze,
    claimed_amounts,
    extract_text,
    request_order_ids,
    reship_reason,
    triage_text,
)
from keel.types import Extraction, Operation, PlanProposal, ProposedAction, Route, Ticket, TriageResult

__all__ = ["LocalProvider", "plan_locally"]

_OPEN_STATUSES = ("shipped", "placed", "paid")


class LocalProvider:
    """Rule-based :class:`~gateway.base.ModelProvider`; same input, same output."""

    name = "local"
    charges_tokens = False
    """It calls no model: the gateway charges its calls nothing (``gateway.charged_tokens``)."""

    def complete(
        self, task: str, schema: type[BaseModel], system: str, payload: dict[str, Any]
    ) -> tuple[BaseModel, Usage]:
        """Answer a gateway task from its payload (the same payload a real model gets)."""
        ticket = Ticket.model_validate(payload["ticket"])
        out: BaseModel
        if task == "triage":
            out = self.triage(ticket)
        elif task == "extract":
            out = self.extract(ticket, payload["route"])
        elif task == "plan":
            out = self.plan(PlanningInput.model_validate(payload))
        else:
            raise ValueError(f"unknown task {task!r}")
        return out, Usage()  # no model was called: no tokens were spent

    def triage(self, ticket: Ticket) -> TriageResult:
        """Route the ticket (see :func:`gateway.rules.triage_text`)."""
        return triage_text(ticket.subject, ticket.body)

    def extract(self, ticket: Ticket, route: Route) -> Extraction:
        """Extract the main operation of ``route`` and its facts."""
        return extract_text(ticket.subject, ticket.body, route)

    def plan(self, planning: PlanningInput) -> PlanProposal:
        """Map the extraction and the customer's records to actions (see :func:`plan_locally`)."""
        return plan_locally(planning)


# --------------------------------------------------------------------------- planning
def _placed_at(order: dict[str, Any]) -> str:
    return str(order.get("placed_at") or "")


def _order_record(order_id: str, planning: PlanningInput) -> dict[str, Any] | None:
    for order in planning.orders:
        if str(order.get("id")).upper() == order_id.upper():
            return order
    for key, order in planning.named_orders.items():
        if key.upper() == order_id.upper():
            return order
    return None


def _resolve_order(ext: Extraction, planning: PlanningInput) -> str | None:
    """The order the action is about: the named one, else one the customer's records imply.

    Tracking takes the customer's most recent order still on its way (else their most
    recent one); every other operation needs the customer to have exactly one order.
    Never an id that is not in the ticket or the customer's own records.
    """
    if ext.order_id:
        return ext.order_id
    own = sorted(planning.orders, key=_placed_at, reverse=True)
    if ext.operation == "track_order":
        moving = [o for o in own if o.get("status") in _OPEN_STATUSES]
        pick = (moving or own)[:1]
        return str(pick[0]["id"]) if pick else None
    return str(own[0]["id"]) if len(own) == 1 else None


def _resolve_subscription(ext: Extraction, planning: PlanningInput) -> str | None:
    """The named subscription, else the customer's only active one."""
    if ext.subscription_id:
        return ext.subscription_id
    active = [s for s in planning.subscriptions if s.get("status", "active") == "active"]
    return str(active[0]["id"]) if len(active) == 1 else None


def _action_for(ext: Extraction, planning: PlanningInput) -> tuple[ProposedAction | None, str]:
    """One operation → one action, or None with the reason it cannot be planned."""
    ticket = planning.ticket
    op = ext.operation
    tool = planning.tool_for(op)  # the tool declared to carry out the operation (its card)
    if tool is None:
        return None, f"{op}: no tool in the {planning.route} allowlist carries it out"
    args: dict[str, Any]
    if op in {"refund", "track_order", "cancel_order", "change_address", "reship"}:
        order_id = _resolve_order(ext, planning)
        if order_id is None:
            return None, f"{op}: no order named and none can be identified from the customer's orders"
        args = {"order_id": order_id}
        if op == "refund":
            amount = ext.amount_cents
            if amount is not None and amount in claimed_amounts(f"{ticket.subject}\n{ticket.body}"):
                amount = None  # the number of a claim ("limit raised to $500"), not the customer's ask
            if amount is None:
                record = _order_record(order_id, planning)
                if record is None:
                    return None, f"refund: order {order_id} not found, so the refundable amount is unknown"
                amount = int(record.get("total_cents", 0)) - int(record.get("refunded_cents", 0))
                if amount <= 0:
                    return None, f"refund: nothing is left to refund on {order_id}"
            args["amount_cents"] = amount
        elif op == "change_address":
            if not ext.new_address:
                return None, "change_address: no new address given"
            args["new_address"] = ext.new_address
        elif op == "reship":
            args["reason"] = reship_reason(ticket.body)
    elif op == "cancel_subscription":
        sub_id = _resolve_subscription(ext, planning)
        if sub_id is None:
            return None, "cancel_subscription: no subscription named and the customer has not exactly one active"
        args = {"subscription_id": sub_id, "at": ext.timing or "period_end"}
    elif op in {"password_reset", "mfa_reset", "unlock_account"}:
        args = {"customer_id": ticket.customer_id}
    elif op == "change_email":
        if not ext.new_email:
            return None, "change_email: no new email address given"
        args = {"customer_id": ticket.customer_id, "new_email": ext.new_email}
    elif op == "billing_question":
        args = {"customer_id": ticket.customer_id}
        if ext.order_id:
            args["order_id"] = ext.order_id
    else:  # question
        args = {"query": ext.query or " ".join(ticket.body.split())[:500]}
    return ProposedAction(tool=tool, args=args), f"{op} → {tool}"


def _secondary_operations(planning: PlanningInput) -> list[Operation]:
    """Other firm side-effect requests of the same route ("cancel O-1 and fix O-2's address").

    Read-only operations are left out: next to a side effect they are context ("it never
    arrived, resend it"), not a second request.
    """
    analysis = analyze(planning.ticket.body)
    scores = analysis.scores(descriptive=False)  # an attempt or a complaint is no request
    first = analysis.first_seen()
    primary = planning.extraction.operation
    ops = [
        op
        for op, score in scores.items()
        if score >= 2
        and op != primary
        and op not in READ_ONLY_OPERATIONS
        and op in ROUTE_OPERATIONS[planning.route]
    ]
    return sorted(ops, key=lambda op: first[op])


_PER_ORDER_OPERATIONS: frozenset[Operation] = frozenset({"cancel_order", "reship", "track_order"})
"""Operations with nothing but the order to decide: one request may name several orders."""


def _primary_actions(planning: PlanningInput) -> tuple[list[ProposedAction], str]:
    """The actions answering the extraction's request: one, one per listed order, or none.

    "Cancel O-1 and O-2" is one request about two orders: both are planned. A request whose
    orders cannot be told ("refund $20 on O-1, it came with O-2") is planned not at all.
    """
    ext = planning.extraction
    if ext.operation in {"refund", "cancel_order", "change_address", "reship"}:
        ids = request_order_ids(ext.operation, planning.ticket.body)
        if ids is None:
            return [], f"{ext.operation}: the ticket names several orders and which one is meant is not clear"
        if len(ids) > 1:
            if ext.operation not in _PER_ORDER_OPERATIONS:
                return [], f"{ext.operation}: one request names several orders ({', '.join(ids)})"
            out: list[ProposedAction] = []
            notes: list[str] = []
            for order_id in ids:
                action, note = _action_for(ext.model_copy(update={"order_id": order_id}), planning)
                if action is None:
                    return [], note
                out.append(action)
                notes.append(note)
            return out, "; ".join(notes)
    action, note = _action_for(ext, planning)
    return ([action] if action else []), note


def plan_locally(planning: PlanningInput) -> PlanProposal:
    """Plan the extraction's operation (plus any other firm request of the same route).

    An operation that cannot be planned without guessing (no order identifiable, no new
    address given) yields no action and says why in the rationale, so a human can ask.
    The plan answers every request of the ticket or none: when one of several requests
    cannot be planned, nothing is, rather than carrying out only the others.
    """
    actions: list[ProposedAction] = []
    notes: list[str] = []
    primary, note = _primary_actions(planning)
    notes.append(note)
    if not primary:
        return PlanProposal(actions=[], rationale="; ".join(notes))
    actions.extend(primary)
    for op in _secondary_operations(planning):
        ext = extract_text(planning.ticket.subject, planning.ticket.body, planning.route, operation=op)
        extra, note = _action_for(ext, planning)
        if extra is None:
            return PlanProposal(actions=[], rationale="; ".join([*notes, note, "not every request can be planned"]))
        if extra not in actions:
            actions.append(extra)
            notes.append(note)
    return PlanProposal(actions=actions[:8], rationale="; ".join(notes))
