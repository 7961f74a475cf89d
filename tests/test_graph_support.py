"""The support graph end to end on the embedded store: routing, policy, approval, execution."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from langgraph.types import Command

from engine.approvals import pending_approval, validate_resume
from guards.approvals import ApprovalError
from keel.config import Settings
from keel.plan import SignedPlan
from engine.runtime import DEMO_FIXTURES, Runtime
from keel.types import Ticket

DEMO = Path(__file__).resolve().parents[1] / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture()
def rt(tmp_path):
    runtime = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key="test-key"))
    runtime.ensure_fixtures()
    for user, role in (("req", "requester"), ("boss", "approver"), ("adm", "admin"), ("req2", "requester")):
        runtime.principals.upsert("acme", user, role)
    yield runtime
    runtime.close()


def tickets() -> dict[str, dict]:
    return {t["id"]: t for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}


def run(rt, ticket_id, thread="t-1", requester="req"):
    cfg = {"configurable": {"thread_id": thread, "requester": requester}}
    return rt.graph().invoke({"ticket": tickets()[ticket_id]}, cfg, context=rt.context()), cfg


def refunds(rt):
    return rt.backoffice.count_rows("refunds", "acme")


def test_demo_tickets_match_expected(rt):
    """Every bundled demo ticket ends as the expected file says (route, status, action, reasons)."""
    expected = {e["ticket_id"]: e for e in map(json.loads, (DEMO / "expected.jsonl").read_text().splitlines())}
    mismatches = []
    for i, tid in enumerate(tickets()):
        state, _ = run(rt, tid, thread=f"demo-{i}")
        exp = expected[tid]
        actions = state.get("actions") or []
        first = actions[0] if actions else None
        got = {
            "route": state["route"],
            "status": state["status"],
            "tool": first["tool"] if first else None,
            "decision": first["decision"] if first else None,
            "amount_cents": (first or {}).get("args", {}).get("amount_cents"),
            "reason_codes": state["reason_codes"],
            "citations": state.get("citations") or [],
        }
        want = {k: exp[k] for k in got}
        if got != want:
            mismatches.append((tid, got, want))
        executed = [a for a in actions if a["state"] == "executed"]
        if exp["decision"] != "execute":
            assert not [a for a in executed if a["tool"] != "search_kb"], f"{tid}: unauthorized side effect"
    assert not mismatches, "\n".join(f"{t}: got {g} want {w}" for t, g, w in mismatches)


def test_small_refund_executes_once_and_verifies(rt):
    state, cfg = run(rt, "T-1")
    assert state["status"] == "completed"
    assert state["actions"][0]["state"] == "executed"
    assert state["verification"]["ok"] is True
    assert rt.backoffice.get_order("acme", "O-5001")["refunded_cents"] == 4599
    assert refunds(rt) == 1 and rt.backoffice.count_rows("tool_ledger", "acme") == 1


def test_approval_interrupt_payload_and_resume(rt):
    state, cfg = run(rt, "T-8")
    assert state["status"] == "awaiting_approval"
    (intr,) = state["__interrupt__"]
    req = intr.value
    assert req["plan_hash"] and len(req["plan_hash"]) == 64
    assert req["plan"][0]["tool"] == "issue_refund" and req["plan"][0]["args"]["amount_cents"] == 8999
    assert any(c["rule"] for c in req["policy_checks"]) and req["evidence"]
    assert refunds(rt) == 0
    value = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss", "reason": "ok"}
    final = rt.graph().invoke(Command(resume=value), cfg, context=rt.context())
    assert final["status"] == "completed"
    assert final["approval"]["reviewer"] == "boss"
    assert rt.backoffice.get_order("acme", "O-5002")["refunded_cents"] == 8999
    assert refunds(rt) == 1


@pytest.mark.parametrize(
    "value, code",
    [
        ({"decision": "approve", "plan_hash": "0" * 64, "reviewer": "boss"}, "stale_plan"),
        # the requester's own run: refused even when the resume claims an approver's role
        ({"decision": "approve", "plan_hash": None, "reviewer": "req", "reviewer_role": "approver"},
         "separation_of_duties"),
        ({"decision": "approve", "plan_hash": None, "reviewer": "req2"}, "not_an_approver"),
        # the shipped pack's approver_roles is ["approver"]: an admin does not decide plans
        ({"decision": "approve", "plan_hash": None, "reviewer": "adm"}, "not_an_approver"),
        ({"decision": "approve", "plan_hash": None, "reviewer": "boss",
          "edits": [{"index": 0, "args": {"amount_cents": 9999}}]}, "edit_raises_amount"),
        ({"decision": "maybe", "plan_hash": None, "reviewer": "boss"}, "invalid_resume"),
    ],
)
def test_refused_resume_keeps_waiting(rt, value, code):
    state, cfg = run(rt, "T-8")
    req = state["__interrupt__"][0].value
    value = {**value, "plan_hash": value["plan_hash"] or req["plan_hash"]}
    again = rt.graph().invoke(Command(resume=value), cfg, context=rt.context())
    assert again["status"] == "awaiting_approval"
    assert again["__interrupt__"][0].value["error"]["code"] == code
    assert refunds(rt) == 0
    # a valid decision still goes through afterwards
    ok = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss"}
    assert rt.graph().invoke(Command(resume=ok), cfg, context=rt.context())["status"] == "completed"
    assert refunds(rt) == 1


def test_validate_resume_binds_reviewer_to_caller(rt):
    state, cfg = run(rt, "T-8")
    req = state["__interrupt__"][0].value
    boss = rt.principals.get("acme", "boss")
    with pytest.raises(ApprovalError) as e:
        validate_resume(rt, "t-1", rt.principals.get("acme", "req"), {"decision": "approve", "plan_hash": req["plan_hash"]})
    assert e.value.code == "not_an_approver"
    with pytest.raises(ApprovalError) as e:
        validate_resume(rt, "t-1", boss, {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "someone"})
    assert e.value.code == "reviewer_mismatch"
    other = boss.model_copy(update={"tenant": "globex"})
    with pytest.raises(ApprovalError) as e:
        validate_resume(rt, "t-1", other, {"decision": "approve", "plan_hash": req["plan_hash"]})
    assert e.value.http_status == 404
    assert pending_approval(rt, "t-1") is not None


def test_downward_edit_is_revalidated_and_executes_smaller_refund(rt):
    state, cfg = run(rt, "T-8")
    req = state["__interrupt__"][0].value
    value = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss",
             "edits": [{"index": 0, "args": {"amount_cents": 4000}}]}
    final = rt.graph().invoke(Command(resume=value), cfg, context=rt.context())
    assert final["status"] == "completed"
    assert final["actions"][0]["args"]["amount_cents"] == 4000
    assert final["approval"]["plan_hash"] != req["plan_hash"]  # the edited plan was re-signed
    assert rt.backoffice.get_order("acme", "O-5002")["refunded_cents"] == 4000


def test_reject_ends_rejected_without_side_effect(rt):
    state, cfg = run(rt, "T-8")
    req = state["__interrupt__"][0].value
    final = rt.graph().invoke(Command(resume={"decision": "reject", "plan_hash": req["plan_hash"],
                                              "reviewer": "boss", "reason": "no"}), cfg, context=rt.context())
    assert final["status"] == "rejected"
    assert refunds(rt) == 0


def test_tampered_plan_is_refused_at_execution(rt):
    state, cfg = run(rt, "T-8")
    req = state["__interrupt__"][0].value
    assert isinstance(state["plan"], SignedPlan)  # typed in state, parsed once when it was signed
    plan = state["plan"].model_dump(mode="json")
    plan["plan"]["actions"][0]["args"]["amount_cents"] = 100  # changed in storage after validation
    rt.graph().update_state(cfg, {"plan": plan})
    final = rt.graph().invoke(Command(resume={"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss"}), cfg, context=rt.context())
    assert final["status"] == "escalated" and "plan_integrity" in final["reason_codes"]
    assert refunds(rt) == 0


def test_replay_from_checkpoint_never_repeats_side_effect(rt):
    state, cfg = run(rt, "T-1")
    history = list(rt.graph().get_state_history(cfg))
    before_exec = next(s for s in history if s.next == ("execute_action",))
    replayed = rt.graph().invoke(None, before_exec.config, context=rt.context())
    assert replayed["status"] == "completed"
    assert refunds(rt) == 1 and rt.backoffice.count_rows("tool_ledger", "acme") == 1
    forked_cfg = rt.graph().update_state(before_exec.config, None)
    assert rt.graph().invoke(None, forked_cfg, context=rt.context())["status"] == "completed"
    assert refunds(rt) == 1


def test_injection_escalates_before_any_tool(rt):
    state, _ = run(rt, "T-11")
    assert state["status"] == "escalated" and state["reason_codes"] == ["suspected_prompt_injection"]
    assert state["actions"] == [] and refunds(rt) == 0


def test_invalid_ticket_escalates_cleanly(rt):
    cfg = {"configurable": {"thread_id": "bad", "requester": "req"}}
    state = rt.graph().invoke({"ticket": {"id": "X", "tenant": "acme"}}, cfg, context=rt.context())
    assert state["status"] == "escalated" and state["reason_codes"] == ["invalid_ticket"]


def test_audit_chain_records_the_run(rt):
    state, cfg = run(rt, "T-1")
    kinds = [r.kind for r in rt.audit.list("acme", "t-1")]
    for k in ("route_decision", "plan_proposed", "policy_decision", "tool_call", "verification", "run_finished"):
        assert k in kinds
    assert rt.audit.verify("acme").ok


def test_tenant_token_budget_escalates_when_spent(rt):
    run(rt, "T-1", thread="first")
    assert rt.tokens.used("acme", NOW) == 0  # the local provider calls no model: it costs no tokens
    assert [r for r in rt.audit.list("acme", "first") if r.kind == "model_call"]
    rt.tokens.charge("acme", rt.tokens.remaining("acme", NOW), NOW)
    state, _ = run(rt, "T-5", thread="second")
    assert state["status"] == "escalated" and state["reason_codes"] == ["budget_exceeded"]
    assert rt.backoffice.get_order("acme", "O-5009")["status"] == "placed"


def test_tool_call_cap_escalates(rt, monkeypatch):
    from guards.budgets import RunCaps

    monkeypatch.setattr(type(rt), "caps", property(lambda self: RunCaps(max_tool_calls=1, wall_clock_s=30, max_retries=2)))
    state, _ = run(rt, "T-1")
    assert state["status"] == "escalated" and state["reason_codes"] == ["budget_exceeded"]
    assert refunds(rt) == 0
