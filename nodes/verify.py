"""VERIFY: re-read every record an action changed and check the change is really there.

A tool saying "done" is not proof. Verification reads the back office again (a store
read, not a tool call, so it never counts against the run's tool budget) and compares
with what the action meant to do.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

from langgraph.runtime import Runtime

from graphs.context import BackOfficeReads, SupportContext
from graphs.state import SupportState
from nodes.common import audit, escalation, traced

__all__ = ["verify", "EXPECTATIONS"]


def _order(bo: BackOfficeReads, tenant: str, args: dict[str, Any]) -> dict[str, Any] | None:
    return bo.get_order(tenant, args["order_id"])


def _customer(bo: BackOfficeReads, tenant: str, args: dict[str, Any]) -> dict[str, Any] | None:
    return bo.get_customer(tenant, args["customer_id"])


def _subscription(bo: BackOfficeReads, tenant: str, args: dict[str, Any]) -> dict[str, Any] | None:
    return bo.get_subscription(tenant, args["subscription_id"])


def _reships(bo: BackOfficeReads, tenant: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"reships": bo.list_reships(tenant, args["order_id"])}


def _resets(bo: BackOfficeReads, tenant: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"resets": bo.list_password_resets(tenant, args["customer_id"])}


EXPECTATIONS: dict[str, tuple[Callable, Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], bool]]] = {
    "issue_refund": (_order, lambda rec, args, out: rec["refunded_cents"] >= args["amount_cents"]),
    "cancel_order": (_order, lambda rec, args, out: rec["status"] == "cancelled"),
    "update_shipping_address": (_order, lambda rec, args, out: rec["shipping_address"] == args["new_address"]),
    "reship_order": (_reships, lambda rec, args, out: len(rec["reships"]) > 0),
    "cancel_subscription": (
        _subscription,
        lambda rec, args, out: rec["status"] == ("cancelled" if args["at"] == "immediate" else "cancels_at_period_end"),
    ),
    "send_password_reset": (_resets, lambda rec, args, out: len(rec["resets"]) > 0),
    "reset_mfa": (_customer, lambda rec, args, out: not rec["account"]["mfa_enabled"]),
    "change_email": (_customer, lambda rec, args, out: rec["email"] == args["new_email"]),
    "unlock_account": (_customer, lambda rec, args, out: not rec["account"]["locked"]),
}
"""For each side-effecting tool: how to re-read its record and what must then hold."""


@traced("verify")
def verify(state: SupportState, runtime: Runtime[SupportContext]) -> dict[str, Any]:
    """Check each executed side effect against a fresh read; compose tracking answers."""
    ctx = runtime.context
    tenant = state["ticket"]["tenant"]
    checked: list[dict[str, Any]] = []
    answer = state.get("answer")
    for r in state.get("results") or []:
        action = state["actions"][r["index"]]
        if r["tool"] == "track_shipment":
            out = r["output"] or {}
            answer = f"Order {out.get('order_id')} is {out.get('status')}: {out.get('carrier_status')}."
            continue
        spec = EXPECTATIONS.get(r["tool"])
        if spec is None:
            continue
        reader, holds = spec
        record = reader(ctx.backoffice, tenant, action["args"])
        ok = record is not None and bool(holds(record, action["args"], r["output"] or {}))
        checked.append({"index": r["index"], "tool": r["tool"], "ok": ok})
    verification = {"checked": checked, "ok": all(c["ok"] for c in checked)}
    audit(ctx, state, "verification", verification, actor="verifier")
    if not verification["ok"]:
        return {"verification": verification, **escalation("verification_failed")}
    return {"verification": verification, "answer": answer}
