"""POLICY_CHECK over fake dependencies: verdicts, routes, holds, and the refund's last check.

The policy engine and pack are the real ones (pure, no database); the refund ledger, audit
log and run index are fakes. The context holds only what the node may use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from graphs.context import PolicyCheckDeps
from graphs.state import RetrievedContext
from guards.injection import ScreenResult
from guards.policy import PlanDecision
from keel.plan import Plan, idempotency_key, sign_plan
from keel.types import ProposedAction, Ticket
from nodes.policy_check import decide_plan, policy_check, policy_facts, refund_guard
from support.node_fakes import (KEY, NOW, PACK, TICKET, FakeAudit, FakeRefunds, FakeRunIndex, clock, context, engine,
                                runtime)
from tools.contracts import ToolError

CUSTOMER = {"id": "C-1", "identity_level": 1, "account": {"locked": False, "mfa_enabled": True}}


def order(oid: str = "O-1", customer: str = "C-1", total: int = 20000) -> dict[str, Any]:
    return {"id": oid, "customer_id": customer, "status": "delivered", "total_cents": total, "refunded_cents": 0,
            "delivered_at": (NOW - timedelta(days=3)).isoformat()}


def refund(amount: int, oid: str = "O-1") -> ProposedAction:
    return ProposedAction(tool="issue_refund", args={"order_id": oid, "amount_cents": amount})


def ctx_for(refunds: FakeRefunds | None = None) -> Any:
    return context(PolicyCheckDeps, policy=PACK, policy_engine=engine(), clock=clock, refunds=refunds or FakeRefunds(),
                   audit=FakeAudit(), run_index=FakeRunIndex())


def state(*actions: ProposedAction, flagged: bool = False, orders: list[dict[str, Any]] | None = None,
          legacy: bool = False) -> dict[str, Any]:
    signed = sign_plan(Plan(tenant="acme", customer_id="C-1", ticket_id="T-1", thread_id="th-1", route="billing",
                            policy_version=PACK.version, actions=list(actions)), KEY)
    records = RetrievedContext(customer=CUSTOMER, orders=orders if orders is not None else [order()])
    screen = ScreenResult(flagged=flagged, score=0.9 if flagged else 0.0)
    st: dict[str, Any] = {"ticket": Ticket.model_validate(TICKET), "route": "billing", "thread_id": "th-1",
                          "requester": "req", "correlation_id": "cid", "plan": signed, "context": records, "screen": screen}
    if legacy:  # a checkpoint written before state was typed
        st.update(ticket=dict(TICKET), plan=signed.model_dump(mode="json"), context=records.model_dump(),
                  screen=screen.model_dump())
    return st


def test_a_refund_under_the_auto_limit_executes():
    ctx = ctx_for()
    st = state(refund(PACK.refund.auto_max_cents))
    out = policy_check(st, runtime=runtime(ctx))
    assert isinstance(out["policy"], PlanDecision) and out["policy"].overall == "execute"
    assert "status" not in out  # the router goes on to EXECUTE_ACTION
    assert out["actions"] == [{"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": PACK.refund.auto_max_cents},
                               "decision": "execute", "state": "not_run"}]
    (row,) = ctx.audit.of("policy_decision")
    assert row.data["plan_hash"] == st["plan"].hash and row.data["policy_version"] == PACK.version
    assert row.data["overall"] == "execute" and ctx.refunds.holds == []


def test_a_refund_over_the_auto_limit_waits_for_approval_and_is_held():
    ctx = ctx_for()
    st = state(refund(PACK.refund.auto_max_cents + 1))
    out = policy_check(st, runtime=runtime(ctx))
    assert out["status"] == "awaiting_approval" and out["policy"].overall == "approve"
    assert [a["state"] for a in out["actions"]] == ["pending_approval"] and out["actions"][0]["decision"] == "approve"
    h = st["plan"].hash
    assert ctx.refunds.holds == [("acme", "th-1", h, "C-1", [(0, "O-1", PACK.refund.auto_max_cents + 1)])]
    assert ctx.run_index.records[-1]["status"] == "awaiting_approval" and ctx.run_index.records[-1]["plan_hash"] == h
    assert ctx.audit.kinds() == ["policy_decision", "approval_requested"]


def test_another_customers_order_is_denied_and_escalates_not_owner():
    out = policy_check(state(refund(1000, "O-9"), orders=[order(), order("O-9", "C-2")]), runtime=runtime(ctx_for()))
    assert out["status"] == "escalated" and "not_owner" in out["reason_codes"]
    assert out["policy"].per_action[0].decision == "deny" and out["actions"][0]["decision"] == "deny"


def test_injection_flag_stops_a_side_effect_that_would_execute():
    out = policy_check(state(refund(1000), flagged=True), runtime=runtime(ctx_for()))
    assert out["status"] == "escalated" and "suspected_prompt_injection" in out["reason_codes"]


def test_velocity_counts_keels_other_refunds_but_not_this_plans_own():
    earlier = [{"order_id": "O-7", "amount_cents": PACK.refund.velocity.max_auto_cents, "state": "executed",
                "at": (NOW - timedelta(days=1)).isoformat()}]
    ctx = ctx_for(FakeRefunds(earlier))
    st = state(refund(1000))
    out = policy_check(st, runtime=runtime(ctx))
    assert out["status"] == "awaiting_approval" and "velocity_limit" in out["reason_codes"]
    (asked,) = ctx.refunds.asked
    assert asked["exclude_thread"] == "th-1" and asked["exclude_keys"] == [idempotency_key("th-1", st["plan"].hash, 0)]
    assert asked["since"] == NOW - PACK.refund.velocity.period


def test_a_plan_without_refunds_reads_no_refund_history():
    ctx = ctx_for()
    policy_check(state(ProposedAction(tool="get_order", args={"order_id": "O-1"})), runtime=runtime(ctx))
    assert ctx.refunds.asked == []


def test_legacy_dict_state_is_decided_like_typed_state():
    typed = policy_check(state(refund(6000)), runtime=runtime(ctx_for()))
    legacy = policy_check(state(refund(6000), legacy=True), runtime=runtime(ctx_for()))
    assert legacy == typed


def test_a_state_without_a_plan_escalates_plan_integrity():
    st = {**state(refund(10)), "plan": None}
    out = policy_check(st, runtime=runtime(ctx_for()))
    assert out["status"] == "escalated" and out["reason_codes"] == ["plan_integrity"]


def test_policy_facts_merge_the_customers_and_the_named_records():
    st = state(refund(10))
    st["context"] = RetrievedContext(customer=CUSTOMER, orders=[order()], named_orders={"O-9": order("O-9", "C-2"), "O-8": None},
                                     subscriptions=[{"id": "S-1", "customer_id": "C-1"}],
                                     named_subscriptions={"S-1": {"id": "S-1", "customer_id": "stale"}, "S-9": None})
    facts = policy_facts(ctx_for(), st)
    assert (facts.tenant, facts.customer_id, facts.now) == ("acme", "C-1", NOW)
    assert set(facts.orders) == {"O-1", "O-9"} and facts.subscriptions == {"S-1": {"id": "S-1", "customer_id": "C-1"}}


def test_refund_guard_refuses_once_committed_refunds_cross_a_tier():
    st = state(refund(1000))
    ledger = FakeRefunds()
    ctx = ctx_for(ledger)
    guard = refund_guard(ctx, st, st["plan"], 0, "execute")
    guard(object())  # nothing committed meanwhile: the refund may go
    assert ledger.locks == [("acme", "C-1")]
    ledger.rows = [{"order_id": "O-7", "amount_cents": PACK.refund.velocity.max_auto_cents, "state": "executed",
                    "at": NOW.isoformat()}]
    with pytest.raises(ToolError) as e:
        guard(object())
    assert e.value.code == "velocity_limit"
    # an approved plan may go on under the same facts: approval is what it now needs
    refund_guard(ctx, st, st["plan"], 0, "approve")(object())


def test_decide_plan_uses_the_signed_route_not_the_states():
    st = {**state(refund(1000)), "route": "access"}  # state edited; the signed plan says billing
    assert decide_plan(ctx_for(), st, st["plan"]).overall == "execute"


def test_a_screen_edited_into_nonsense_counts_as_flagged():
    """An edit through update_state can never lift the injection flag: unparseable fails closed."""
    for screen in ({"flagged": False, "score": 7}, {"flagged": False}, "clean"):
        out = policy_check({**state(refund(1000)), "screen": screen}, runtime=runtime(ctx_for()))
        assert out["status"] == "escalated" and "suspected_prompt_injection" in out["reason_codes"], screen
    # a clean screen stored as a dict (an older checkpoint) is read as clean
    out = policy_check({**state(refund(1000)), "screen": {"flagged": False, "score": 0.0}}, runtime=runtime(ctx_for()))
    assert out["policy"].overall == "execute"
