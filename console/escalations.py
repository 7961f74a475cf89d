"""The console's escalations: the team's queue of escalated runs, take-over and resolution.

Storage, rules, audit and feedback are the review desk's (:func:`engine.review.review_desk`),
and who may act is the JSON API's: take-over and resolution call the routes of
:mod:`api.routes.escalations` with the signed-in principal, after the same role check their
dependency applies. This module only adapts them to the pages (each escalation with its
ticket and evidence from the thread's checkpoint) and turns refusals into messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from api.deps import ApiState
from api.routes import escalations as escalations_api
from engine.escalations import Escalation, EscalationError, Resolution
from engine.review import review_desk, state_reader
from keel.errors import KeelError
from keel.principals import Principal

__all__ = ["EscalationRefused", "ACTIONS", "may_review", "listing", "act", "record_for"]

ACTIONS = ("take", "resolve")
"""What a person can do to an escalation from the console."""


@dataclass(frozen=True)
class EscalationRefused(KeelError):
    """An escalation action refused, with the status and message the page shows."""

    status: int
    message: str


def may_review(p: Principal) -> None:
    """The API's role rule for escalations (its route dependency), as :class:`EscalationRefused`."""
    try:
        escalations_api._REVIEWERS(p)
    except HTTPException as e:
        raise EscalationRefused(e.status_code, f"escalations: {e.detail}") from None


def listing(st: ApiState, p: Principal, limit: int = 50) -> list[Escalation]:
    """Open and taken escalations of the caller's tenant, oldest first, with ticket and evidence."""
    may_review(p)
    store = review_desk(st.runtime).escalations
    read = state_reader(st.runtime)
    out = []
    for e in store.list(p.tenant, state="active", limit=limit):
        th = st.queue.get_thread(p.tenant, e.thread_id)
        try:
            out.append(store.get(p.tenant, e.thread_id, state_of=read, graph_id=(th or {}).get("graph_id") or "support"))
        except EscalationError:  # gone meanwhile
            continue
    return out


def record_for(st: ApiState, p: Principal, thread_id: str) -> Escalation | None:
    """The thread's escalation (any state), or None when it did not escalate."""
    try:
        return review_desk(st.runtime).escalations.get(p.tenant, thread_id)
    except EscalationError:
        return None


def act(st: ApiState, p: Principal, thread_id: str, action: str, form: dict[str, str], correlation_id: str) -> dict[str, Any]:
    """Take over or resolve ``thread_id``'s escalation as ``p``, through the API's routes."""
    may_review(p)
    try:
        if action == "take":
            return escalations_api.take_escalation(thread_id, st=st, p=p, cid=correlation_id)
        if action == "resolve":
            try:
                body = Resolution(outcome=form.get("outcome", ""), resolution=form.get("resolution", "").strip())
            except ValidationError:
                raise EscalationRefused(422, "a resolution needs an outcome and a note saying what was done") from None
            return escalations_api.resolve_escalation(thread_id, body, st=st, p=p, cid=correlation_id)
    except HTTPException as e:
        raise EscalationRefused(e.status_code, str(e.detail)) from None
    raise EscalationRefused(404, f"unknown action {action!r}")
