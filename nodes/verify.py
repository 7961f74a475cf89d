"""VERIFY: re-read every record an action changed and check the change is really there.

A tool saying "done" is not proof. Verification reads the back office again (a store
read, not a tool call, so it never counts against the run's tool budget) and compares
with what the action meant to do. What to re-read and what must hold is part of each
tool's declaration (:class:`tools.declaration.Verify`), read through
:func:`tools.registry.verify_action`; a tool that declares nothing to verify (a read) is
not checked.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from graphs.context import VerifyDeps
from graphs.state import SupportState
from nodes.common import audit, escalation, traced
from tools.registry import verify_action

__all__ = ["verify"]


@traced("verify")
def verify(state: SupportState, runtime: Runtime[VerifyDeps]) -> dict[str, Any]:
    """Check each executed side effect against a fresh read; compose tracking answers."""
    ctx = runtime.context
    tenant = state["ticket"]["tenant"]
    checked: list[dict[str, Any]] = []
    answer = state.get("answer")
    for r in state.get("results") or []:
        action = state["actions"][r["index"]]
        if r.get("dry_run"):  # a dry run (KEEL_ENV=staging) wrote nothing: there is nothing to re-read
            checked.append({"index": r["index"], "tool": r["tool"], "ok": True, "dry_run": True})
            continue
        if r["tool"] == "track_shipment":
            out = r["output"] or {}
            answer = f"Order {out.get('order_id')} is {out.get('status')}: {out.get('carrier_status')}."
            continue
        ok = verify_action(ctx.backoffice, tenant, r["tool"], action["args"], r["output"])
        if ok is None:
            continue
        checked.append({"index": r["index"], "tool": r["tool"], "ok": ok})
    verification = {"checked": checked, "ok": all(c["ok"] for c in checked)}
    audit(ctx, state, "verification", verification, actor="verifier")
    if not verification["ok"]:
        return {"verification": verification, **escalation("verification_failed")}
    return {"verification": verification, "answer": answer}
