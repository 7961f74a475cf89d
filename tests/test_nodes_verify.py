"""VERIFY over fake store reads: a tool's "done" is checked against a fresh read.

The context holds only the store reads and the audit log.
"""

from __future__ import annotations

from typing import Any

from graphs.context import VerifyDeps
from keel.types import Ticket
from nodes.verify import verify
from tools.registry import TOOLS
from support.node_fakes import TICKET, FakeAudit, FakeBackOffice, context, runtime


def run(order: dict[str, Any], results: list[dict[str, Any]], actions: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    ctx = context(VerifyDeps, backoffice=FakeBackOffice(orders=[order]), audit=FakeAudit())
    st = {"ticket": Ticket.model_validate(TICKET), "thread_id": "th-1", "results": results, "actions": actions}
    return verify(st, runtime=runtime(ctx)), ctx


_REFUND_OUT = TOOLS.get("issue_refund").output_model
DONE = {k: v for k, v in {"refund_id": "R-1", "order_id": "O-1", "amount_cents": 1000, "currency": "USD",
                          "refunded_cents": 1000, "refundable_cents": 0}.items() if k in _REFUND_OUT.model_fields}
"""A refund result that matches the tool's output contract (VERIFY trusts no other)."""
REFUND = {"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 1000}, "decision": "execute", "state": "executed"}


def test_a_refund_that_is_really_there_verifies():
    out, ctx = run({"id": "O-1", "refunded_cents": 1000}, [{"index": 0, "tool": "issue_refund", "output": DONE}], [REFUND])
    assert out["verification"] == {"checked": [{"index": 0, "tool": "issue_refund", "ok": True}], "ok": True}
    assert ctx.audit.rows[0].kind == "verification" and ctx.audit.rows[0].tenant == "acme"


def test_a_refund_the_store_does_not_show_escalates_verification_failed():
    out, _ = run({"id": "O-1", "refunded_cents": 0}, [{"index": 0, "tool": "issue_refund", "output": DONE}], [REFUND])
    assert out["status"] == "escalated" and out["reason_codes"] == ["verification_failed"]
    assert out["verification"]["ok"] is False


def test_tracking_results_compose_the_answer():
    track = {"tool": "track_shipment", "args": {"order_id": "O-1"}, "decision": "execute", "state": "executed"}
    out, _ = run({"id": "O-1"}, [{"index": 0, "tool": "track_shipment",
                                  "output": {"order_id": "O-1", "status": "shipped", "carrier_status": "in transit"}}], [track])
    assert out["answer"] == "Order O-1 is shipped: in transit." and out["verification"]["ok"] is True
