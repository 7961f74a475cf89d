"""Unit tests of keel's building blocks (:mod:`nodes.blocks`) over fake dependencies, and of
the supply rules that no event reaches (allowlist, arguments, approval edits). No database:
each runs in milliseconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command

from guards.approvals import ApprovalError, check_resume
from guards.budgets import RunCaps, new_budget
from guards.policy import PlanDecision
from guards.supply_pack import load_supply_policy
from guards.supply_policy import SupplyFacts, SupplyPolicyEngine
from keel.plan import Plan, idempotency_key, sign_plan
from keel.types import ActionDecision, PolicyCheck, ProposedAction
from nodes import blocks
from tools.runner import ToolResult

from support.node_fakes import FakeAudit, FakeRunIndex

KEY = b"k" * 32
NOW = datetime(2027, 5, 12, 15, tzinfo=UTC)
PACK = load_supply_policy()


@dataclass
class Tools:
    """Records every call; a repeated idempotency key is answered from its first result."""

    calls: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    ledger: dict[str, ToolResult] = field(default_factory=dict)

    def call(self, name: str, args: Any, ctx: Any) -> ToolResult:
        self.calls.append((name, dict(args), ctx.idempotency_key))
        if ctx.idempotency_key in self.ledger:
            return self.ledger[ctx.idempotency_key].model_copy(update={"replayed": True})
        res = ToolResult(ok=True, output={"id": f"R{len(self.calls)}"}, attempts=1)
        if ctx.idempotency_key:
            self.ledger[ctx.idempotency_key] = res
        return res


@dataclass
class Judge:
    decisions: list[str]
    seen: list[tuple[Any, ...]] = field(default_factory=list)

    def evaluate_plan(self, actions: Any, facts: Any, route: Any, injection_flagged: bool = False) -> PlanDecision:
        self.seen.append((tuple(a.tool for a in actions), facts, route, injection_flagged))
        per = [ActionDecision(decision=d, checks=[PolicyCheck(rule="r", result="pass")]) for d in self.decisions]
        overall = max(self.decisions, key=blocks.SEVERITY.__getitem__)
        return PlanDecision(overall=overall, per_action=per, policy_version="v")


def ctx_with(judge: Judge, roles: dict[str, str] | None = None) -> Any:
    roles = roles or {"ann": "approver", "req": "requester", "root": "admin"}
    return SimpleNamespace(policy=SimpleNamespace(approvals=PACK.approvals, version="v"), policy_engine=judge,
                           caps=RunCaps.from_pack(PACK), tools=Tools(), audit=FakeAudit(), run_index=FakeRunIndex(),
                           role_of=lambda tenant, user: roles.get(user), clock=lambda: NOW, signing_key=KEY)


WF = blocks.Workflow(
    run_of=lambda s: blocks.RunRef(tenant="t1", owner="A-1", subject_id="E-1", thread_id=s.get("thread_id"),
                                   requester=s.get("requester"), correlation_id=s.get("correlation_id"),
                                   route=s.get("route")),
    facts=lambda ctx, state, tx=None: {"facts": True},
    allowlist=lambda ctx, route: frozenset({"reroute_shipment", "get_shipment", "substitute_supplier"}),
    side_effect=lambda tool: tool != "get_shipment",
    after_edit=lambda a: ProposedAction(tool=a.tool, args={**a.args, "amount_cents": a.args["qty"] * 10})
    if "qty" in a.args else a,
)


def plan(*actions: ProposedAction, thread: str = "th-1"):
    return sign_plan(Plan(tenant="t1", customer_id="A-1", ticket_id="E-1", thread_id=thread, route="delay",
                          policy_version="v", actions=list(actions)), KEY)


REROUTE = ProposedAction(tool="reroute_shipment", args={"shipment_id": "SH-1", "option_id": "O", "amount_cents": 10})
READ = ProposedAction(tool="get_shipment", args={"shipment_id": "SH-1"})


def state_for(signed: Any, decisions: list[str], **extra: Any) -> dict[str, Any]:
    verdict = Judge(decisions).evaluate_plan(signed.plan.actions, None, "delay")
    return {"thread_id": "th-1", "requester": "req", "route": "delay", "plan": signed, "policy": verdict,
            "budget": new_budget(NOW), **extra}


# ------------------------------------------------------------------ decide / stricter
def test_decide_is_the_one_evaluation_under_the_signed_route():
    judge = Judge(["execute"])
    blocks.decide(judge, plan(REROUTE), {"f": 1}, flagged=True)
    assert judge.seen == [(("reroute_shipment",), {"f": 1}, "delay", True)]


def test_stricter_keeps_the_stricter_of_stored_and_fresh():
    fresh = Judge(["approve", "execute"]).evaluate_plan([REROUTE, READ], None, None)
    stored = Judge(["execute", "deny"]).evaluate_plan([REROUTE, READ], None, None)
    assert blocks.stricter(stored, fresh) == (["approve", "deny"], "deny")
    assert blocks.stricter(None, fresh)[1] == "deny"  # no stored verdict: nothing was validated


# ------------------------------------------------------------------ audit, run index, gate, finish
def test_audit_and_run_index_name_the_run():
    ctx = ctx_with(Judge(["execute"]))
    run = blocks.RunRef("t1", "A-1", "E-1", "th-1", "req", "cid", "delay")
    blocks.audit_run(ctx, run, "triage", {"x": 1})
    blocks.record_run(ctx, run, "awaiting_approval", plan_hash="h")
    row = ctx.audit.rows[0]
    assert (row.tenant, row.thread_id, row.correlation_id, row.data) == ("t1", "th-1", "cid", {"x": 1})
    assert ctx.run_index.records == [{"thread_id": "th-1", "tenant": "t1", "status": "awaiting_approval", "ticket_id": "E-1",
                                    "requester": "req", "route": "delay", "plan_hash": "h"}]


def test_policy_gate_routes_by_the_strictest_decision():
    signed = plan(REROUTE)
    ctx = ctx_with(Judge(["approve"]))
    out = blocks.policy_gate({"thread_id": "th-1", "route": "delay", "plan": signed}, ctx, WF)
    assert out["status"] == "awaiting_approval" and out["actions"][0]["state"] == "pending_approval"
    assert [r.kind for r in ctx.audit.rows] == ["policy_decision", "approval_requested"]
    ctx = ctx_with(Judge(["deny"]))
    assert blocks.policy_gate({"thread_id": "th-1", "route": "delay", "plan": signed}, ctx, WF)["status"] == "escalated"


def test_finish_records_the_end():
    ctx = ctx_with(Judge(["execute"]))
    assert blocks.finish({"reason_codes": ["x"], "actions": []}, ctx, WF, escalated=False) == {"status": "completed",
                                                                                                "reason_codes": []}
    assert blocks.finish({"reason_codes": ["x"]}, ctx, WF, escalated=True)["reason_codes"] == ["x"]
    assert [c["status"] for c in ctx.run_index.records] == []  # no thread id: nothing to index
    assert [r.data["status"] for r in ctx.audit.rows] == ["completed", "escalated"]


# ------------------------------------------------------------------ approval interrupt
def approval_graph(ctx: Any):
    g = StateGraph(dict)
    g.add_node("ask", lambda state, config: blocks.await_approval(state, config, ctx, WF))
    g.add_edge(START, "ask")
    g.add_edge("ask", END)
    return g.compile(checkpointer=InMemorySaver())


def test_approval_request_carries_plan_hash_checks_and_evidence():
    signed = plan(REROUTE, READ)
    req = blocks.approval_request(state_for(signed, ["approve", "execute"], evidence=[{"tool": "get_shipment"}]), WF)
    assert req["type"] == "plan_approval" and req["plan_hash"] == signed.hash
    assert [c["action_index"] for c in req["policy_checks"]] == [0, 1]
    assert [a["state"] for a in req["plan"]] == ["pending_approval", "pending_approval"]
    assert req["evidence"] == [{"tool": "get_shipment"}] and req["customer_id"] == "A-1"


def test_refused_resumes_ask_again_and_a_valid_one_is_audited():
    signed = plan(REROUTE)
    ctx = ctx_with(Judge(["approve"]))
    g = approval_graph(ctx)
    cfg = {"configurable": {"thread_id": "th-1"}}
    first = g.invoke(state_for(signed, ["approve"]), cfg)["__interrupt__"][0].value
    assert first["plan_hash"] == signed.hash
    for resume, code in (({"decision": "approve", "plan_hash": "0" * 64, "reviewer": "ann"}, "stale_plan"),
                         ({"decision": "approve", "plan_hash": signed.hash, "reviewer": "req"}, "not_an_approver"),
                         ({"decision": "approve", "plan_hash": signed.hash, "reviewer": "root"}, "not_an_approver")):
        again = g.invoke(Command(resume=resume), cfg)["__interrupt__"][0].value
        assert again["error"]["code"] == code
    assert not [r for r in ctx.audit.rows if r.kind == "approval"]
    out = g.invoke(Command(resume={"decision": "approve", "plan_hash": signed.hash, "reviewer": "ann"}), cfg)
    assert out["approval"]["decision"] == "approve" and out["approval"]["plan_hash"] == signed.hash
    assert [r.kind for r in ctx.audit.rows] == ["approval"] and ctx.run_index.records[-1]["status"] == "running"


def test_an_edit_is_resigned_recomputed_and_decided_again():
    sub = ProposedAction(tool="substitute_supplier", args={"po_id": "PO-1", "sku": "S", "supplier_id": "X", "qty": 5,
                                                           "unit_price_cents": 10, "amount_cents": 50})
    signed = plan(sub)
    judge = Judge(["approve"])
    ctx = ctx_with(judge)
    g = approval_graph(ctx)
    cfg = {"configurable": {"thread_id": "th-1"}}
    g.invoke(state_for(signed, ["approve"]), cfg)
    out = g.invoke(Command(resume={"decision": "approve", "plan_hash": signed.hash, "reviewer": "ann",
                                   "edits": [{"index": 0, "args": {"qty": 3}}]}), cfg)
    edited = out["plan"]
    assert edited.hash != signed.hash and edited.plan.actions[0].args["amount_cents"] == 30
    assert out["approval"]["plan_hash"] == edited.hash and len(judge.seen) == 1


# ------------------------------------------------------------------ execution
def test_execute_calls_side_effects_with_their_idempotency_keys_and_reads_without():
    signed = plan(REROUTE, READ)
    ctx = ctx_with(Judge(["execute", "execute"]))
    out = blocks.execute_plan(state_for(signed, ["execute", "execute"]), ctx, WF)
    assert [a["state"] for a in out["actions"]] == ["executed", "executed"]
    assert ctx.tools.calls == [("reroute_shipment", REROUTE.args, idempotency_key("th-1", signed.hash, 0)),
                               ("get_shipment", READ.args, None)]
    again = blocks.execute_plan(state_for(signed, ["execute", "execute"]), ctx, WF)
    assert again["results"][0]["replayed"] is True  # a re-run is answered by the ledger, not acted again


def test_execute_refuses_a_tampered_plan_an_unapproved_one_and_a_denied_one():
    signed = plan(REROUTE)
    forged = signed.model_copy(update={"plan": signed.plan.model_copy(update={"actions": [
        ProposedAction(tool="reroute_shipment", args={**REROUTE.args, "amount_cents": 1})]})})
    for state, judge, code in ((state_for(forged, ["execute"]), ["execute"], "plan_integrity"),
                               (state_for(signed, ["approve"], approval={"decision": "approve",
                                                                        "plan_hash": signed.hash}), ["approve"],
                                "approval_missing"),
                               (state_for(signed, ["execute"]), ["deny"], None)):
        ctx = ctx_with(Judge(judge))
        out = blocks.execute_plan(state, ctx, WF)
        assert out["status"] == "escalated" and not ctx.tools.calls
        if code:
            assert code in out["reason_codes"]


def test_execute_runs_an_approved_plan_once_its_approval_is_in_the_audit_chain():
    signed = plan(REROUTE)
    ctx = ctx_with(Judge(["approve"]))
    ctx.audit.append("t1", "approval", actor="ann", data={"decision": "approve", "plan_hash": signed.hash},
                     thread_id="th-1")
    out = blocks.execute_plan(state_for(signed, ["approve"], approval={"decision": "approve", "plan_hash": signed.hash}),
                              ctx, WF)
    assert out["actions"][0]["state"] == "executed"


def test_a_tool_failing_transiently_stops_the_run_resumably():
    signed = plan(REROUTE)
    ctx = ctx_with(Judge(["execute"]))
    ctx.tools.call = lambda name, args, c: ToolResult(ok=False, error_code="transient_failure", attempts=3)
    with pytest.raises(blocks.ToolFailure):
        blocks.execute_plan(state_for(signed, ["execute"]), ctx, WF)


# ------------------------------------------------------------------ supply rules no event reaches
def facts(**kw: Any) -> SupplyFacts:
    base = {"tenant": "t1", "account_id": "A-1", "now": NOW,
            "purchase_orders": {"PO-1": {"id": "PO-1", "account_id": "A-1",
                                         "lines": [{"sku": "S", "qty": 5, "unit_price_cents": 100, "supplier_id": "X"}]}}}
    return SupplyFacts(**{**base, **kw})


def test_supply_rules_tool_outside_allowlist_and_bad_template():
    engine = SupplyPolicyEngine(PACK)
    d = engine.evaluate(ProposedAction(tool="open_carrier_claim", args={"shipment_id": "SH-1", "amount_cents": 1}),
                        facts(), "stock")
    assert (d.decision, d.reason_codes) == ("deny", ["tool_not_allowed"])
    d = engine.evaluate(ProposedAction(tool="notify_customer", args={"po_id": "PO-1", "template": "promo"}), facts(),
                        "delay")
    assert (d.decision, d.reason_codes) == ("deny", ["invalid_args"])


def test_supply_plan_over_the_call_budget_escalates_every_action():
    actions = [ProposedAction(tool="get_purchase_order", args={"po_id": "PO-1"})] * (PACK.budgets.max_tool_calls + 1)
    v = SupplyPolicyEngine(PACK).evaluate_plan(actions, facts(), "stock")
    assert v.overall == "escalate" and {d.decision for d in v.per_action} == {"escalate"}
    assert v.reason_codes == ["budget_exceeded"]


def test_supply_pack_lets_a_reviewer_lower_only_its_editable_fields():
    sub = {"tool": "substitute_supplier", "args": {"po_id": "PO-1", "sku": "S", "supplier_id": "X", "qty": 5,
                                                   "unit_price_cents": 10, "amount_cents": 50}}
    request = {"plan_hash": "a" * 64, "tenant": "t1", "requester": "req", "plan": [sub]}

    def resume(args: dict[str, Any]) -> Any:
        return check_resume({"decision": "approve", "plan_hash": "a" * 64, "reviewer": "ann", "reviewer_role": "approver",
                             "edits": [{"index": 0, "args": args}]}, request, PACK.approvals)

    assert resume({"qty": 3}).edits[0].args == {"qty": 3}
    for args, code in (({"qty": 6}, "edit_raises_amount"), ({"unit_price_cents": 5}, "edit_not_allowed"),
                       ({"supplier_id": "Y"}, "edit_not_allowed")):
        with pytest.raises(ApprovalError) as e:
            resume(args)
        assert e.value.code == code


# ------------------------------------------------------------------ the pack's schema
def test_the_supply_pack_is_validated_on_load(tmp_path):
    from guards.pack import PolicyError
    from guards.supply_pack import DEFAULT_SUPPLY_POLICY_PATH, load_supply_policy

    text = DEFAULT_SUPPLY_POLICY_PATH.read_text()
    assert load_supply_policy().sha256 and PACK.allowlist("unknown") == frozenset()
    for old, new, problem in (("auto_max_cents = 2500 ", "auto_max_cents = 99999 ", "auto_max_cents"),
                              ('tools = ["get_shipment", "get_purchase_order", "reroute_shipment"',
                               'tools = ["get_shipment", "launch_rocket", "reroute_shipment"', "unknown tools"),
                              ("[reads]", "[reads]\nsurprise = 1", "surprise")):
        assert old in text
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace(old, new, 1))
        with pytest.raises(PolicyError, match=problem):
            load_supply_policy(bad)
