"""COMPLETE and ESCALATE_TO_HUMAN over fake dependencies: the run's last status, audit row
and run-index entry. The context holds only the audit log and the run index."""

from __future__ import annotations

from typing import Any

from graphs.context import FinishDeps
from keel.types import Ticket
from nodes.finish import complete, escalate_to_human
from support.node_fakes import TICKET, FakeAudit, FakeRunIndex, context, runtime

ACTIONS = [{"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 100}, "decision": "execute",
            "state": "executed"}]


def ctx() -> Any:
    return context(FinishDeps, audit=FakeAudit(), run_index=FakeRunIndex(), memory=None)


def state(**kw: Any) -> dict[str, Any]:
    return {"ticket": Ticket.model_validate(TICKET), "thread_id": "th-1", "requester": "req", "correlation_id": "cid",
            "route": "billing", "actions": ACTIONS, **kw}


def test_complete_clears_reasons_and_records_the_summary():
    c = ctx()
    out = complete(state(status="running", reason_codes=["velocity_limit"]), runtime=runtime(c))
    assert out == {"status": "completed", "reason_codes": []}
    (row,) = c.audit.rows
    assert row.kind == "run_finished" and row.tenant == "acme" and row.thread_id == "th-1" and row.correlation_id == "cid"
    assert row.data == {"status": "completed", "route": "billing", "reason_codes": ["velocity_limit"],
                        "actions": [{"tool": "issue_refund", "decision": "execute", "state": "executed"}]}
    assert c.run_index.records[-1]["status"] == "completed" and c.run_index.records[-1]["ticket_id"] == "T-1"


def test_a_rejected_run_stays_rejected_with_its_reason():
    c = ctx()
    out = complete(state(status="rejected", reason_codes=["rejected_by_reviewer"]), runtime=runtime(c))
    assert out == {"status": "rejected"}  # reason_codes kept as the reviewer's
    assert c.audit.rows[0].data["status"] == "rejected" and c.run_index.records[-1]["status"] == "rejected"


def test_escalation_keeps_its_reasons_or_says_escalated():
    c = ctx()
    assert escalate_to_human(state(status="escalated", reason_codes=["not_owner"]), runtime=runtime(c)) == {
        "status": "escalated", "reason_codes": ["not_owner"]}
    assert escalate_to_human(state(status="escalated", reason_codes=[]), runtime=runtime(c))["reason_codes"] == ["escalated"]
    assert [r.data["reason_codes"] for r in c.audit.rows] == [["not_owner"], ["escalated"]]


def test_an_invalid_tickets_escalation_is_still_audited_and_indexed():
    """TRIAGE leaves an invalid input as it came (no Ticket): the end node must not fail on it."""
    c = ctx()
    for raw in ({"tenant": "acme", "body": 5}, "not an object", None):
        out = escalate_to_human({"ticket": raw, "thread_id": "th-2", "status": "escalated",
                                 "reason_codes": ["invalid_ticket"]}, runtime=runtime(c))
        assert out == {"status": "escalated", "reason_codes": ["invalid_ticket"]}
    assert [r.tenant for r in c.audit.rows] == ["acme", "unknown", "unknown"]
    assert [r["ticket_id"] for r in c.run_index.records] == [None, None, None]
