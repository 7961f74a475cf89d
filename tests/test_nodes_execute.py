"""EXECUTE_ACTION over fake dependencies: what it refuses before any side effect, and how it acts.

The tool runner, refund ledger and audit log are fakes; the policy engine is the real one
(pure). The context holds only what execution may use. Each test counts the tool calls.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from graphs.state import RetrievedContext
from guards.budgets import new_budget
from guards.injection import ScreenResult
from keel.plan import Plan, idempotency_key, sign_plan
from keel.types import ProposedAction, Ticket
from nodes.execute import ToolFailure, execute_action
from nodes.policy_check import decide_plan
from support.node_fakes import (KEY, NOW, PACK, TICKET, FakeAudit, FakeRefunds, FakeTools, caps, clock, context, engine,
                                runtime)
from tools.runner import ToolResult

ORDER = {"id": "O-1", "customer_id": "C-1", "status": "delivered", "total_cents": 20000, "refunded_cents": 0,
         "delivered_at": (NOW - timedelta(days=2)).isoformat()}
DONE = {"refund_id": "R-1", "order_id": "O-1", "amount_cents": 1000}


def ctx_for(tools: FakeTools | None = None, audit: FakeAudit | None = None) -> Any:
    return context(signing_key=KEY, policy=PACK, policy_engine=engine(), clock=clock, refunds=FakeRefunds(),
                   audit=audit or FakeAudit(), tools=tools or FakeTools({"issue_refund": DONE}), caps=caps())


def state(amount: int, ctx: Any, **kw: Any) -> dict[str, Any]:
    signed = sign_plan(Plan(tenant="acme", customer_id="C-1", ticket_id="T-1", thread_id="th-1", route="billing",
                            policy_version=PACK.version,
                            actions=[ProposedAction(tool="issue_refund", args={"order_id": "O-1", "amount_cents": amount})]),
                       KEY)
    st: dict[str, Any] = {"ticket": Ticket.model_validate(TICKET), "thread_id": "th-1", "requester": "req",
                          "correlation_id": "cid", "route": "billing", "plan": signed,
                          "context": RetrievedContext(orders=[ORDER]), "screen": ScreenResult(flagged=False, score=0.0),
                          "budget": new_budget(datetime.now(UTC)), **kw}
    st.setdefault("policy", decide_plan(ctx, st, signed))
    return st


def test_an_auto_refund_runs_once_with_its_ledger_key_and_last_check():
    ctx = ctx_for()
    st = state(1000, ctx)
    out = execute_action(st, runtime=runtime(ctx))
    assert [a["state"] for a in out["actions"]] == ["executed"] and "status" not in out
    ((tool, args, call),) = ctx.tools.calls
    assert (tool, args) == ("issue_refund", {"order_id": "O-1", "amount_cents": 1000})
    assert call.idempotency_key == idempotency_key("th-1", st["plan"].hash, 0) and call.guard is not None
    assert out["results"] == [{"index": 0, "tool": "issue_refund", "output": DONE, "replayed": False,
                               "idempotency_key": call.idempotency_key}]


def test_a_plan_changed_after_signing_is_refused_before_any_call():
    ctx = ctx_for()
    st = state(1000, ctx)
    forged = st["plan"].model_dump(mode="json")
    forged["plan"]["actions"][0]["args"]["amount_cents"] = 900
    out = execute_action({**st, "plan": forged}, runtime=runtime(ctx))
    assert out["status"] == "escalated" and out["reason_codes"] == ["plan_integrity"] and ctx.tools.calls == []


@pytest.mark.parametrize("garbage", [{"plan": "x"}, {"hash": 1}, "not a plan", {"plan": {"actions": "x"}, "hash": "", "signature": ""}])
def test_a_plan_that_is_not_a_plan_escalates_plan_integrity(garbage):
    ctx = ctx_for()
    st = state(1000, ctx)
    out = execute_action({**st, "plan": garbage}, runtime=runtime(ctx))
    assert out["status"] == "escalated" and out["reason_codes"] == ["plan_integrity"] and out["actions"] == []
    assert ctx.tools.calls == []


def test_a_plan_needing_approval_is_refused_without_a_recorded_approval():
    ctx = ctx_for()
    st = state(8000, ctx)
    forged = {"decision": "approve", "plan_hash": st["plan"].hash, "reviewer": "boss"}  # in state only, not audited
    for approval in (None, forged):
        out = execute_action({**st, "approval": approval}, runtime=runtime(ctx))
        assert out["reason_codes"][0] == "approval_missing" and ctx.tools.calls == []
    # a forged "execute" verdict does not skip the approval: the stricter decision wins
    cheap = state(1000, ctx).get("policy")
    out = execute_action({**st, "policy": cheap}, runtime=runtime(ctx))
    assert out["reason_codes"][0] == "approval_missing" and ctx.tools.calls == []


def test_an_approval_recorded_in_the_audit_log_lets_the_plan_run():
    audit = FakeAudit()
    ctx = ctx_for(audit=audit)
    st = state(8000, ctx)
    audit.append("acme", "approval", actor="boss", thread_id="th-1", data={"decision": "approve", "plan_hash": st["plan"].hash})
    out = execute_action({**st, "approval": {"decision": "approve", "plan_hash": st["plan"].hash}}, runtime=runtime(ctx))
    assert [a["state"] for a in out["actions"]] == ["executed"] and len(ctx.tools.calls) == 1


def test_a_transient_tool_failure_stops_the_run_resumably():
    ctx = ctx_for(FakeTools({"issue_refund": ToolResult(ok=False, error_code="transient_failure", attempts=3)}))
    with pytest.raises(ToolFailure):
        execute_action(state(1000, ctx), runtime=runtime(ctx))


def test_a_refused_tool_call_escalates_with_its_code():
    ctx = ctx_for(FakeTools({"issue_refund": ToolResult(ok=False, error_code="amount_exceeds_refundable", attempts=1)}))
    out = execute_action(state(1000, ctx), runtime=runtime(ctx))
    assert out["status"] == "escalated" and out["reason_codes"] == ["amount_exceeds_refundable"]
    assert [a["state"] for a in out["actions"]] == ["not_run"]
