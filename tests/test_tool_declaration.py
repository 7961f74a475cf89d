"""A tool is declared once (issue 8.3): every shipped tool's declaration is complete and
truthful, and a toy tool added as one module plus its pack rule runs through the real graph.

The toy tool (``tests/support/toy_tool.py``) is registered through the public mechanism
(``tools.registry.register``) and given a rule in a copy of the shipped pack; nothing else
in keel is told about it. It is planned (by a scripted model that reads the tool cards in
its payload), judged by the policy engine, paused for approval with a before → after
preview, executed through the runner under an idempotency key, verified by VERIFY from
its declaration, and a replay of its key acts no second time. Without a pack rule the
same tool is denied and never runs.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone, UTC
from pathlib import Path
from typing import Any, get_args

import pytest
from langgraph.types import Command
from pydantic import BaseModel

from engine.approvals import pending_approval, preview_plan, validate_resume
from engine.runtime import Runtime
from gateway.base import OPERATION_ROUTE, Usage
from gateway.gateway import ModelGateway
from guards.pack import DEFAULT_POLICY_PATH, PolicyError, PolicyPack, load_policy
from guards.policy import PolicyEngine, PolicyFacts
from keel.config import Settings
from keel.db import Database
from keel.plan import idempotency_key
from keel.types import Extraction, Operation, PlanProposal, ProposedAction, TriageResult
from support import toy_tool
from tools.backoffice import BackOffice
from tools.contracts import ToolEnv, ToolInput
from tools.declaration import DeclarationError, RecordChange, Verify, tool
from tools.fixtures import demo_fixtures
from tools.registry import TOOLS, cards, preview_actions, register, side_effect_tools, unregister, verify_action
from tools.runner import ToolContext, ToolRunner

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T = "acme"
SHIPPED = load_policy()
ORDERS_TOOLS = 'tools = ["get_customer", "get_order", "track_shipment", "cancel_order", "update_shipping_address", "reship_order"]'


# --------------------------------------------------------------------------- shipped tools


def test_every_shipped_tool_has_a_complete_declaration() -> None:
    engine = PolicyEngine(SHIPPED, cards())
    allowlisted = {t: r for r, rp in SHIPPED.routes.items() for t in rp.tools}
    assert set(TOOLS) == set(allowlisted), "every declared tool is allowlisted somewhere, and only those"
    for name, decl in TOOLS.items():
        assert decl.name == name and decl.module.startswith("tools.catalog."), name
        assert decl.description and decl.input_model.model_config.get("extra") == "forbid", name
        assert decl.output_model.model_config.get("extra") == "forbid", name
        if decl.side_effect:
            assert decl.verify is not None and decl.preview is not None, name
            assert engine.has_rule(name), f"{name}: a side effect without a rule in the shipped pack"
        for route in decl.routes:
            assert name in SHIPPED.allowlist(route), f"{name} declares route {route} but is not allowlisted there"
        if decl.operation is not None:
            assert OPERATION_ROUTE[decl.operation] in decl.routes, name  # the router agrees
    # every operation the router can extract has exactly one tool that carries it out
    carried = [d.operation for d in TOOLS.values() if d.operation]
    assert sorted(carried) == sorted(Operation.__args__)
    assert {c.name for c in cards().values() if c.side_effect} == side_effect_tools()


SIDE_EFFECTS: dict[str, tuple[str, dict[str, Any]]] = {
    "issue_refund": ("C-1001", {"order_id": "O-5001", "amount_cents": 1000, "reason": "scratched"}),
    "cancel_subscription": ("C-1006", {"subscription_id": "S-9002", "at": "immediate"}),
    "cancel_order": ("C-1012", {"order_id": "O-5009"}),
    "update_shipping_address": ("C-1001", {"order_id": "O-5010", "new_address": "1 New Street, Springfield"}),
    "reship_order": ("C-1001", {"order_id": "O-5001", "reason": "arrived broken"}),
    "send_password_reset": ("C-1004", {"customer_id": "C-1004"}),
    "reset_mfa": ("C-1004", {"customer_id": "C-1004"}),
    "change_email": ("C-1004", {"customer_id": "C-1004", "new_email": "new.address@example.com"}),
    "unlock_account": ("C-1004", {"customer_id": "C-1004"}),
}


@pytest.fixture
def bo(tmp_path: Path) -> Iterator[BackOffice]:
    db = Database(f"sqlite:///{tmp_path}/bo.db")
    backoffice = BackOffice(db)
    backoffice.setup()
    backoffice.load_fixtures(demo_fixtures())
    toy_tool.create_table(db)
    yield backoffice
    db.close()


def _reread(bo: BackOffice, kind: str, rid: str, customer: str) -> dict[str, Any] | None:
    if kind == "order":
        return bo.get_order(T, rid)
    if kind == "subscription":
        return bo.get_subscription(T, rid)
    if kind == "account":
        return bo.get_account(T, rid)
    if kind == "payment":
        return next((p for p in bo.list_payments(T, customer) if p["id"] == rid), None)
    raise AssertionError(f"no re-read for {kind}")


def _ctx(customer: str, key: str | None = None, allow: frozenset[str] | None = None) -> ToolContext:
    return ToolContext(tenant=T, customer_id=customer, user_id="agent", allowlist=allow or frozenset(TOOLS),
                       idempotency_key=key or uuid.uuid4().hex, now=NOW)


@pytest.mark.parametrize("name", sorted(SIDE_EFFECTS))
def test_each_side_effect_previews_what_it_then_does_and_verifies_it(bo: BackOffice, name: str) -> None:
    """The preview's "after" is what the records hold once the tool ran; VERIFY agrees."""
    customer, args = SIDE_EFFECTS[name]
    assert set(SIDE_EFFECTS) == side_effect_tools()
    [item] = preview_actions(bo, T, [{"tool": name, "args": args}])
    assert "error" not in item and item["changes"], item
    with ToolRunner(bo) as runner:
        result = runner.call(name, args, _ctx(customer))
    assert result.ok, result
    assert verify_action(bo, T, name, args, result.output) is True
    for change in map(RecordChange.model_validate, item["changes"]):
        if change.before is None:  # a record the call creates: its fields show up in the output or the store
            continue
        now = _reread(bo, change.kind, str(change.id), customer)
        assert now is not None
        for field, value in change.after.items():
            got = now.get(field) if field in now else (now.get("account") or {}).get(field)
            assert got == value, f"{name}: preview promised {change.kind}.{field}={value!r}, store has {got!r}"
    # a result that does not match what was asked is not verified
    wrong = {**args, **({"amount_cents": 10**9} if "amount_cents" in args else {})}
    if wrong != args:
        assert verify_action(bo, T, name, wrong, result.output) is False


def test_reads_declare_nothing_to_verify_or_preview(bo: BackOffice) -> None:
    assert verify_action(bo, T, "get_order", {"order_id": "O-5001"}, {}) is None
    [item] = preview_actions(bo, T, [{"tool": "get_order", "args": {"order_id": "O-5001"}}])
    assert item["changes"] == [] and "error" not in item
    [bad] = preview_actions(bo, T, [{"tool": "no_such_tool", "args": {}}])
    assert bad["error"] == "unknown_tool"


# --------------------------------------------------------------------------- declarations


class NoteInput(ToolInput):
    """Do something."""

    order_id: str


class NoteOutput(BaseModel):
    ok: bool


def act(bo: Any, tx: Any, env: ToolEnv, args: NoteInput) -> NoteOutput:
    return NoteOutput(ok=True)


def test_an_incomplete_declaration_is_refused_when_declared() -> None:
    with pytest.raises(DeclarationError, match="VERIFY"):
        tool(side_effect=True, preview=lambda bo, t, a: [])(act)
    with pytest.raises(DeclarationError, match="preview"):
        tool(side_effect=True, verify=Verify(read=lambda bo, t, a: {}, holds=lambda r, a, o: True))(act)
    with pytest.raises(DeclarationError, match="route"):
        tool(side_effect=False, operation="refund")(act)
    with pytest.raises(DeclarationError, match="annotate"):
        tool(side_effect=False)(lambda bo, tx, env, args: None)
    read_only = tool(side_effect=False, name="note_lookup")(act)
    assert read_only.card.input_schema["required"] == ["order_id"] and read_only.description == "Do something."
    with pytest.raises(DeclarationError, match="declared twice"):
        register(dataclasses.replace(read_only, name="get_order"))


# --------------------------------------------------------------------------- the toy tool


def _pack(tmp_path: Path, *, rule: str | None) -> Path:
    text = DEFAULT_POLICY_PATH.read_text()
    assert ORDERS_TOOLS in text
    text = text.replace(ORDERS_TOOLS, ORDERS_TOOLS[:-1] + ', "add_gift_note"]')
    if rule is not None:
        text += f'\n[tools.add_gift_note]\ndecision = "{rule}"\n'
    path = tmp_path / "pack.toml"
    path.write_text(text)
    return path


@pytest.fixture
def toy() -> Iterator[None]:
    added = register(toy_tool)
    assert [d.name for d in added] == ["add_gift_note"]
    try:
        yield
    finally:
        unregister("add_gift_note")


class ScriptedModel:
    """A model that routes to orders and plans the toy tool, recording what it was shown."""

    name = "scripted"
    charges_tokens = False

    def __init__(self, note: str) -> None:
        self.note = note
        self.plan_payloads: list[dict[str, Any]] = []

    def complete(self, task: str, schema: type[BaseModel], system: str, payload: dict[str, Any]) -> tuple[BaseModel, Usage]:
        if task == "triage":
            return TriageResult(route="orders", confidence=0.95), Usage()
        if task == "extract":
            return Extraction(operation="track_order", order_id="O-5009"), Usage()
        self.plan_payloads.append(payload)
        action = ProposedAction(tool="add_gift_note", args={"order_id": "O-5009", "note": self.note})
        return PlanProposal(actions=[action], rationale="the customer asks for a gift note"), Usage()


def _runtime(tmp_path: Path, pack: Path) -> Runtime:
    rt = Runtime(Settings(data_dir=tmp_path / "data", now=NOW, plan_signing_key="test-key", policy_file=pack))
    rt.ensure_fixtures()
    toy_tool.create_table(rt.backoffice.db)
    for user, role in (("req", "requester"), ("boss", "approver")):
        rt.principals.upsert(T, user, role)
    return rt


def _invoke(rt: Runtime, model: ScriptedModel, payload: Any, thread: str = "toy-1") -> dict[str, Any]:
    ctx = dataclasses.replace(rt.context(), gateway=ModelGateway([model]))
    cfg = {"configurable": {"thread_id": thread, "requester": "req"}}
    return rt.graph().invoke(payload, cfg, context=ctx)


TICKET = {"id": "TOY-1", "tenant": T, "customer_id": "C-1012", "subject": "gift",
          "body": "Please add a gift note saying Happy birthday Sam to order O-5009."}


def test_toy_tool_is_planned_approved_previewed_executed_once_and_verified(tmp_path: Path, toy: None) -> None:
    rt = _runtime(tmp_path, _pack(tmp_path, rule="approve"))
    try:
        model = ScriptedModel("Happy birthday Sam")
        state = _invoke(rt, model, {"ticket": TICKET})
        # the planner was shown the toy tool's card: description and argument schema
        [shown] = [c for c in model.plan_payloads[0]["tools"] if c["name"] == "add_gift_note"]
        assert shown["description"] == "Attach a gift note to an order that has not shipped."
        assert shown["input_schema"]["required"] == ["order_id", "note"] and shown["side_effect"] is True

        assert state["status"] == "awaiting_approval", state.get("reason_codes")
        request = pending_approval(rt, "toy-1")
        assert request is not None and request["plan"][0]["tool"] == "add_gift_note"
        [item] = preview_plan(rt, T, request["plan"])
        changes = {c["kind"]: c for c in item["changes"]}
        assert changes["gift_note"]["before"] is None
        assert changes["gift_note"]["after"] == {"order_id": "O-5009", "note": "Happy birthday Sam"}
        assert changes["order"]["before"] == {"id": "O-5009", "status": "placed"}
        assert toy_tool.notes(rt.backoffice, T, "O-5009") == {}, "nothing runs before the approval"

        boss = rt.principals.get(T, "boss")
        value = validate_resume(rt, "toy-1", boss, {"decision": "approve", "plan_hash": request["plan_hash"]})
        final = _invoke(rt, model, Command(resume=value))
        assert final["status"] == "completed", final.get("reason_codes")
        assert final["verification"] == {"checked": [{"index": 0, "tool": "add_gift_note", "ok": True}], "ok": True}
        [(note_id, text)] = toy_tool.notes(rt.backoffice, T, "O-5009").items()
        assert text == "Happy birthday Sam" and rt.backoffice.count_rows("tool_ledger", T) == 1

        # the same key again (a crash between the call and the checkpoint): the ledger answers
        key = idempotency_key("toy-1", request["plan_hash"], 0)
        again = rt.tools.call("add_gift_note", {"order_id": "O-5009", "note": "Happy birthday Sam"},
                              _ctx("C-1012", key, frozenset({"add_gift_note"})))
        assert again.ok and again.replayed and again.output["note_id"] == note_id
        assert len(toy_tool.notes(rt.backoffice, T, "O-5009")) == 1
    finally:
        rt.close()


def test_toy_tool_without_a_pack_rule_is_denied_and_never_runs(tmp_path: Path, toy: None) -> None:
    rt = _runtime(tmp_path, _pack(tmp_path, rule=None))
    try:
        state = _invoke(rt, ScriptedModel("Happy birthday Sam"), {"ticket": TICKET})
        assert state["status"] == "escalated" and "no_policy_rule" in state["reason_codes"], state["reason_codes"]
        assert all(a["state"] == "not_run" for a in state["actions"])
        assert toy_tool.notes(rt.backoffice, T, "O-5009") == {}
        assert rt.backoffice.count_rows("tool_ledger", T) == 0
    finally:
        rt.close()


def test_policy_engine_defaults_a_side_effect_without_a_rule_to_deny(tmp_path: Path, toy: None) -> None:
    facts = PolicyFacts.from_fixtures(demo_fixtures().model_dump(mode="json"), "C-1012", NOW)
    action = ProposedAction(tool="add_gift_note", args={"order_id": "O-5009", "note": "hi"})
    unruled = PolicyEngine(load_policy(_pack(tmp_path, rule=None), tools=TOOLS), cards())
    d = unruled.evaluate(action, facts, "orders")
    assert d.decision == "deny" and d.reason_codes == ["no_policy_rule"]
    assert [c.rule for c in d.checks] == ["tool.known", "route.allowlist", "ownership", "policy.rule"]
    for rule in ("execute", "approve", "escalate", "deny"):
        ruled = PolicyEngine(load_policy(_pack(tmp_path, rule=rule), tools=TOOLS), cards())
        assert ruled.evaluate(action, facts, "orders").decision == rule
    # a flagged ticket escalates the toy side effect like any other: the card says it has one
    executes = PolicyEngine(load_policy(_pack(tmp_path, rule="execute"), tools=TOOLS), cards())
    assert executes.side_effect("add_gift_note")
    assert executes.evaluate_plan([action], facts, "orders", injection_flagged=True).overall == "escalate"


def test_a_pack_naming_an_undeclared_tool_is_refused(tmp_path: Path) -> None:
    path = _pack(tmp_path, rule="approve")  # the toy tool is not registered here
    with pytest.raises(PolicyError, match=r"unknown tools \[routes.orders: add_gift_note, tools: add_gift_note\]"):
        load_policy(path, tools=TOOLS)
    with pytest.raises(PolicyError, match="unknown tools"):
        PolicyEngine(load_policy(path), cards())
    text = DEFAULT_POLICY_PATH.read_text() + '\n[tools.issue_refund]\ndecision = "execute"\n'
    with pytest.raises(PolicyError, match="duplicates the tool's own rule"):
        PolicyEngine(PolicyPack.from_toml(text), cards())
