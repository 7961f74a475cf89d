"""Exactly once across resume and crash: a supply side effect never acts twice.

The execute block derives each side effect's idempotency key from (thread, plan hash,
index) and the tool runner commits the effect and its ledger row in one transaction, so a
re-run of EXECUTE (a resumed run, a worker restarting the step after a crash between the
commit and the checkpoint) is answered from the ledger.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from langgraph.types import Command

from engine.batch import run_input
from engine.runtime import Runtime
from engine.supply import load_supply_fixtures, supply_context, supply_parts
from keel.config import Settings
from nodes import blocks
from nodes.supply import SUPPLY

ROOT = Path(__file__).resolve().parent.parent
SUPPLY_DIR = ROOT / "workflows" / "supply"
NOW = datetime(2027, 5, 12, 15, tzinfo=UTC)
EVENTS = {e["id"]: e for e in map(json.loads, (SUPPLY_DIR / "events.jsonl").read_text().splitlines())}


@pytest.fixture
def rt(tmp_path):
    rt = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key="supply-test-key"))
    load_supply_fixtures(rt, SUPPLY_DIR / "fixtures.json")
    yield rt
    rt.close()


def records(rt: Runtime, kind: str, key: str, value: str) -> list[dict]:
    return [r for r in supply_parts(rt).store.all("tidewater", kind) if r.get(key) == value]


def test_a_replayed_execute_does_not_act_twice(rt):
    row = run_input(rt, "supply", "SC-01", {"event": EVENTS["SC-01"]}, requester="ops", thread_id="th-sc01")
    assert row["status"] == "completed" and row["actions"][0]["state"] == "executed"
    assert len(records(rt, "reroute", "shipment_id", "SH-5001")) == 1
    state = rt.graph("supply").get_state({"configurable": {"thread_id": "th-sc01"}}).values
    again = blocks.execute_plan(state, supply_context(rt), SUPPLY)
    assert again["results"][0]["replayed"] is True
    assert len(records(rt, "reroute", "shipment_id", "SH-5001")) == 1


def test_a_crash_after_the_commit_is_resumed_without_a_second_effect(rt, monkeypatch):
    runner = supply_parts(rt).tools
    real = runner.call
    crashed: list[str] = []

    def crash_once(name, args, ctx):
        res = real(name, args, ctx)
        if name == "reroute_shipment" and not crashed:
            crashed.append(name)
            raise ConnectionError("worker lost its connection after the tool committed")
        return res

    monkeypatch.setattr(runner, "call", crash_once)
    cfg = {"configurable": {"thread_id": "th-crash", "requester": "ops"}}
    graph = rt.graph("supply")
    with pytest.raises(ConnectionError):
        graph.invoke({"event": EVENTS["SC-05"]}, cfg, context=rt.context("supply"))
    assert len(records(rt, "reroute", "shipment_id", "SH-5005")) == 1
    final = graph.invoke(None, cfg, context=rt.context("supply"))  # the worker's retry, from the checkpoint
    assert final["status"] == "completed" and final["results"][0]["replayed"] is True
    assert len(records(rt, "reroute", "shipment_id", "SH-5005")) == 1


def test_an_approved_plan_resumed_twice_acts_once(rt):
    rt.principals.create_key("tidewater", "ann", "approver")
    cfg = {"configurable": {"thread_id": "th-sc02", "requester": "ops"}}
    graph = rt.graph("supply")
    out = graph.invoke({"event": EVENTS["SC-02"]}, cfg, context=rt.context("supply"))
    req = out["__interrupt__"][0].value
    assert req["type"] == "plan_approval" and req["plan"][0]["args"]["amount_cents"] == 2501
    resume = {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "ann"}
    final = graph.invoke(Command(resume=resume), cfg, context=rt.context("supply"))
    assert final["status"] == "completed"
    state = graph.get_state(cfg).values
    blocks.execute_plan(state, supply_context(rt), SUPPLY)  # the approved step once more
    assert len(records(rt, "reroute", "shipment_id", "SH-5002")) == 1


def test_a_claim_waiting_for_approval_counts_as_filed_until_it_is_rejected(rt):
    """supply-v1 ``count_pending``: keel's claims in plans awaiting approval block a second
    claim on the same shipment; a rejection releases the hold."""
    rt.principals.create_key("tidewater", "ann", "approver")
    graph = rt.graph("supply")

    def run(thread: str) -> dict:
        return graph.invoke({"event": EVENTS["SC-48"]}, {"configurable": {"thread_id": thread, "requester": "ops"}},
                            context=rt.context("supply"))

    first = run("th-a")
    req = first["__interrupt__"][0].value
    second = graph.get_state({"configurable": {"thread_id": "th-a"}}).values
    assert second["status"] == "awaiting_approval"
    blocked = run("th-b")
    assert blocked["status"] == "escalated" and blocked["reason_codes"] == ["duplicate_claim"]
    graph.invoke(Command(resume={"decision": "reject", "plan_hash": req["plan_hash"], "reviewer": "ann",
                                 "reason": "not ours"}),
                 {"configurable": {"thread_id": "th-a"}}, context=rt.context("supply"))
    again = run("th-c")
    assert again["__interrupt__"][0].value["plan"][0]["decision"] == "approve"
