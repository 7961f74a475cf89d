"""Typed state through the checkpoint store: round trips on SQLite and Postgres, the JSON
clients see, and threads stored before state was typed (plain dicts) resuming as they are.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.serde import _msgpack
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.types import Command

from engine.checkpoints import serializer
from engine.jsonable import jsonable
from engine.runtime import Runtime
from graphs.state import STATE_MODELS, RetrievedContext
from guards.injection import ScreenResult
from guards.policy import PlanDecision, PolicyFacts
from keel.config import Settings
from keel.plan import Plan, SignedPlan, sign_plan, verify_plan
from keel.types import Extraction, ProposedAction, Ticket, TriageResult
from nodes.common import context_of, extraction_of, plan_of, policy_of, screen_of, ticket_of, triage_of
from support.node_fakes import KEY, PACK, engine
from tools.fixtures import parse_fixtures_text

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T8 = {"id": "T-8", "tenant": "acme", "customer_id": "C-1002", "channel": "email", "subject": "Refund for O-5002",
      "body": "Hi, the espresso machine from order O-5002 stopped heating after two uses. I'd like a full refund please."}
"""A full refund of 8999 on the customer's own order: waits for approval."""

TYPED = {"ticket": Ticket, "triage": TriageResult, "screen": ScreenResult, "extraction": Extraction,
         "context": RetrievedContext, "plan": SignedPlan, "policy": PlanDecision}
"""The fields a run paused at approval holds typed, and their types."""

ACCESSORS = {"ticket": ticket_of, "triage": triage_of, "screen": screen_of, "extraction": extraction_of,
             "context": context_of, "plan": plan_of, "policy": policy_of}


def runtime(data_dir: Path, database_url: str | None = None, tenant: str = "acme") -> Runtime:
    rt = Runtime(Settings(data_dir=data_dir, database_url=database_url, now=NOW, plan_signing_key="ckpt-key"))
    raw = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())
    raw["tenant"] = tenant
    if not rt.backoffice.has_tenant(tenant):
        rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(raw)).fixtures)
    rt.principals.upsert(tenant, "req", "requester")
    rt.principals.upsert(tenant, "boss", "approver")
    return rt


def pause(rt: Runtime, thread: str, tenant: str) -> dict[str, Any]:
    cfg = {"configurable": {"thread_id": thread, "requester": "req"}}
    state = rt.graph().invoke({"ticket": {**T8, "tenant": tenant}}, cfg, context=rt.context())
    assert state["status"] == "awaiting_approval"
    return state["__interrupt__"][0].value


def approve(rt: Runtime, thread: str, req: dict[str, Any]) -> dict[str, Any]:
    cfg = {"configurable": {"thread_id": thread}}
    return rt.graph().invoke(Command(resume={"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss"}),
                             cfg, context=rt.context())


def as_stored_before_typing(rt: Runtime, thread: str) -> None:
    """Rewrite the paused thread's state the way keel stored it before fields were typed:
    every value a plain JSON dict (a new checkpoint after POLICY_CHECK, as an upgrade finds it)."""
    cfg = {"configurable": {"thread_id": thread}}
    values = rt.graph().get_state(cfg).values
    legacy = {k: json.loads(json.dumps(jsonable(v))) for k, v in values.items()}
    rt.graph().update_state(cfg, legacy, as_node="policy_check")
    stored = rt.graph().get_state(cfg)
    assert stored.next == ("await_approval",)
    assert all(type(stored.values[k]) is dict for k in TYPED)


# --------------------------------------------------------------------------- the serializer


def sample_state() -> dict[str, Any]:
    """One value of each typed field, as a run holds them (no store involved)."""
    plan = sign_plan(Plan(tenant="acme", customer_id="C-1", ticket_id="T-1", thread_id="th", route="billing",
                          policy_version=PACK.version,
                          actions=[ProposedAction(tool="issue_refund", args={"order_id": "O-1", "amount_cents": 10})]), KEY)
    return {
        "ticket": Ticket(id="T-1", tenant="acme", customer_id="C-1", body="hi"),
        "triage": TriageResult(route="billing", confidence=0.9, intents=["refund"]),
        "screen": ScreenResult(flagged=True, score=0.7, signals=["override"], classes=["instruction_override"]),
        "extraction": Extraction(operation="refund", order_id="O-1"),
        "context": RetrievedContext(customer={"id": "C-1"}, orders=[{"id": "O-1", "customer_id": "C-1"}]),
        "plan": plan,
        "policy": engine().evaluate_plan(plan.plan.actions, PolicyFacts(tenant="acme", customer_id="C-1", now=NOW),
                                         route="billing"),
    }


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict-msgpack"])
def test_every_state_model_round_trips_with_its_type(monkeypatch, strict):
    monkeypatch.setattr(_msgpack, "STRICT_MSGPACK_ENABLED", strict)
    serde = serializer()
    values = sample_state()
    assert {type(v) for v in values.values()} <= set(STATE_MODELS)
    back = serde.loads_typed(serde.dumps_typed(values))
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in values.items()}
    assert back == values


def test_a_serializer_that_refuses_the_models_gives_dicts_the_accessors_parse(monkeypatch):
    """A stricter LangGraph (or a store written by another build) hands back field dicts:
    the nodes still read the same typed values."""
    monkeypatch.setattr(_msgpack, "STRICT_MSGPACK_ENABLED", True)
    values = sample_state()
    strict = JsonPlusSerializer()
    back = strict.loads_typed(strict.dumps_typed(values))
    assert all(type(v) is dict for v in back.values())
    for name, read in ACCESSORS.items():
        assert read(back) == values[name], name


def test_state_models_read_like_the_dicts_they_replace():
    """Code written against the JSON shape (a script over ``graph.invoke``) reads the same."""
    values = sample_state()
    as_json = json.loads(json.dumps(jsonable(values)))
    plan = values["plan"]
    assert plan["hash"] == as_json["plan"]["hash"] and plan["plan"]["actions"][0]["args"] == {"order_id": "O-1", "amount_cents": 10}
    assert values["screen"].get("flagged") is True and values["policy"].get("nope", 1) == 1 and "overall" in values["policy"]
    assert {**values["ticket"]} == {k: getattr(values["ticket"], k) for k in Ticket.model_fields}
    with pytest.raises(KeyError):
        values["triage"]["missing"]


# --------------------------------------------------------------------------- real stores


def check_round_trip(make: Any, tenant: str) -> None:
    thread = str(uuid.uuid4())
    rt = make()
    try:
        req = pause(rt, thread, tenant)
        snap = rt.graph().get_state({"configurable": {"thread_id": thread}})
        assert {k: type(snap.values[k]) for k in TYPED} == TYPED  # rebuilt typed from the store
        verify_plan(snap.values["plan"], b"ckpt-key")
        assert req["plan_hash"] == snap.values["plan"].hash
        # what clients see (API values, stream chunks) is the same JSON as before typing
        out = jsonable(snap.values)
        assert out["plan"] == snap.values["plan"].model_dump(mode="json") and out["ticket"]["id"] == "T-8"
        assert out["policy"]["overall"] == "approve" and isinstance(out["policy"]["per_action"][0]["checks"], list)
        assert set(out["context"]) == {"customer", "account", "orders", "subscriptions", "named_orders",
                                       "named_subscriptions", "articles"}
        for name in TYPED:  # byte for byte what the dict each field held before typing gives
            assert json.dumps(out[name]) == json.dumps(jsonable(snap.values[name].model_dump())), name
        assert out["context"]["orders"] == rt.backoffice.list_orders(tenant, "C-1002")
    finally:
        rt.close()
    rt = make()  # a new runtime on the same store: the paused run resumes from its checkpoint
    try:
        final = approve(rt, thread, req)
        assert final["status"] == "completed" and isinstance(final["plan"], SignedPlan)
        assert rt.backoffice.count_rows("refunds", tenant) == 1
    finally:
        rt.close()


def check_legacy_thread(make: Any, tenant: str) -> None:
    thread = str(uuid.uuid4())
    rt = make()
    try:
        pause(rt, thread, tenant)
        as_stored_before_typing(rt, thread)
        again = rt.graph().invoke(None, {"configurable": {"thread_id": thread}}, context=rt.context())
        req = again["__interrupt__"][0].value
        assert req["plan"][0]["args"]["amount_cents"] == 8999
        final = approve(rt, thread, req)
        assert final["status"] == "completed", final.get("reason_codes")
        assert [a["state"] for a in final["actions"]] == ["executed"]
        assert rt.backoffice.count_rows("refunds", tenant) == 1
        assert rt.backoffice.get_order(tenant, "O-5002")["refunded_cents"] == 8999
    finally:
        rt.close()


def test_sqlite_checkpoints_round_trip_typed_state(tmp_path):
    check_round_trip(lambda: runtime(tmp_path), "acme")


def test_sqlite_thread_stored_as_dicts_resumes_and_acts_once(tmp_path):
    check_legacy_thread(lambda: runtime(tmp_path), "acme")


@pytest.mark.postgres
def test_postgres_checkpoints_round_trip_typed_state(pg_url, tmp_path):
    tenant = "t" + uuid.uuid4().hex[:10]
    check_round_trip(lambda: runtime(tmp_path, pg_url, tenant), tenant)


@pytest.mark.postgres
def test_postgres_thread_stored_as_dicts_resumes_and_acts_once(pg_url, tmp_path):
    tenant = "t" + uuid.uuid4().hex[:10]
    check_legacy_thread(lambda: runtime(tmp_path, pg_url, tenant), tenant)
