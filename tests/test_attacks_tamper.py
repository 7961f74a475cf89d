"""Tampering with a paused or approved run: what execution accepts, and what it refuses.

An attacker here can write graph state (``update_state``, as LangGraph Studio or a
``langgraph dev`` server allows) or the checkpoint rows themselves. They cannot sign with
keel's key. Every test counts refunds and ledger rows in the back office afterwards.

(a) plan arguments changed after approval, before execution (the first execution attempt
    fails transiently, so the approved checkpoint waits at ``execute_action``) → refused,
    ``plan_integrity``; (b) forged approvals and a forged policy verdict → refused,
    ``approval_missing``; (c) plans signed with another key → refused; (d) reviewer edits
    that raise an amount or change a record → refused, the thread keeps waiting; (e) a
    replayed, duplicated or concurrent approval resume → the side effect runs once.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from langgraph.types import Command

from keel.config import Settings
from keel.plan import Plan, SignedPlan, sign_plan
from engine.jsonable import jsonable
from engine.runtime import Runtime
from tools.contracts import TransientToolError

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T8 = {"id": "T-8", "tenant": "acme", "customer_id": "C-1002", "channel": "email", "subject": "Refund for O-5002",
      "body": "Hi, the espresso machine from order O-5002 stopped heating after two uses. I'd like a full refund please."}
"""Full refund of 8999 on C-1002's own order: needs approval (5000 < 8999 ≤ 50000)."""
CFG = {"configurable": {"thread_id": "tamper", "requester": "req"}}


@pytest.fixture()
def rt(tmp_path):
    shm = Path("/dev/shm")
    d = Path(tempfile.mkdtemp(prefix="keel-tamper-", dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    runtime = Runtime(Settings(data_dir=d, now=NOW, plan_signing_key="test-key"))
    runtime.ensure_fixtures()
    for user, role in (("req", "requester"), ("boss", "approver"), ("boss2", "approver")):
        runtime.principals.upsert("acme", user, role)
    yield runtime
    runtime.close()
    if d != tmp_path:
        shutil.rmtree(d, ignore_errors=True)


def refunds(rt: Runtime) -> int:
    return rt.backoffice.count_rows("refunds", "acme")


def ledger(rt: Runtime) -> int:
    return rt.backoffice.count_rows("tool_ledger", "acme")


def refunded(rt: Runtime, order: str = "O-5002") -> int:
    return rt.backoffice.get_order("acme", order)["refunded_cents"]


def pause(rt: Runtime) -> dict[str, Any]:
    """Run T-8 to its approval interrupt; the request the reviewer sees."""
    state = rt.graph().invoke({"ticket": T8}, CFG, context=rt.context())
    assert state["status"] == "awaiting_approval"
    return state["__interrupt__"][0].value


def approve(plan_hash: str, reviewer: str = "boss", **extra: Any) -> Command:
    return Command(resume={"decision": "approve", "plan_hash": plan_hash, "reviewer": reviewer, "reason": "ok", **extra})


def approved_but_not_executed(rt: Runtime) -> dict[str, Any]:
    """Approve T-8 while issue_refund fails transiently: EXECUTE_ACTION raises and the run
    stays at the approved checkpoint, next == ("execute_action",)."""
    req = pause(rt)
    failing = {"on": True}

    def fault(tool: str, attempt: int) -> None:
        if failing["on"] and tool == "issue_refund":
            raise TransientToolError("back office unavailable")

    rt.tools.fault_hook = fault
    rt.tools.backoff_base_s = rt.tools.backoff_max_s = 0.001
    from nodes.execute import ToolFailure

    with pytest.raises(ToolFailure):
        rt.graph().invoke(approve(req["plan_hash"]), CFG, context=rt.context())
    failing["on"] = False
    snap = rt.graph().get_state(CFG)
    assert snap.next == ("execute_action",)
    assert snap.values["approval"]["plan_hash"] == req["plan_hash"] and snap.values["approval"]["decision"] == "approve"
    assert refunds(rt) == 0 and ledger(rt) == 0
    return req


def as_json(value: Any) -> Any:
    """A state value as the JSON an attacker writes back (state holds typed models)."""
    return json.loads(json.dumps(jsonable(value)))


def tampered(plan: dict[str, Any], *, rehash: bool = False, key: bytes | None = None, **args: Any) -> dict[str, Any]:
    """The stored plan with action 0's args changed; optionally re-hashed or re-signed."""
    plan = as_json(plan)
    plan["plan"]["actions"][0]["args"].update(args)
    if key is not None:
        return sign_plan(Plan.model_validate(plan["plan"]), key).model_dump(mode="json")
    if rehash:
        good = sign_plan(Plan.model_validate(plan["plan"]), b"unknown")
        plan["hash"] = good.hash  # a consistent hash, but the signature still covers the old one
    return plan


def write_checkpoint_row(rt: Runtime, thread_id: str, change) -> None:
    """Edit the newest checkpoint row of a thread in the SQLite store, outside LangGraph."""
    path = rt.settings.data_dir / "checkpoints.db"
    serde = rt.checkpointer.serde
    with sqlite3.connect(str(path)) as conn:
        cid, typ, blob = conn.execute(
            "SELECT checkpoint_id, type, checkpoint FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = '' "
            "ORDER BY checkpoint_id DESC LIMIT 1", (thread_id,)).fetchone()
        checkpoint = serde.loads_typed((typ, blob))
        change(checkpoint["channel_values"])
        typ, blob = serde.dumps_typed(checkpoint)
        conn.execute("UPDATE checkpoints SET type = ?, checkpoint = ? WHERE thread_id = ? AND checkpoint_id = ?",
                     (typ, blob, thread_id, cid))


def assert_refused(final: dict[str, Any], rt: Runtime, code: str) -> None:
    assert final["status"] == "escalated" and code in final["reason_codes"], (final["status"], final["reason_codes"])
    assert not [a for a in final["actions"] if a["state"] == "executed"]
    assert refunds(rt) == 0 and ledger(rt) == 0 and refunded(rt) == 0


# --------------------------------------------------------------------------- (a) changed after approval


@pytest.mark.parametrize(
    "change",
    [
        {"amount_cents": 899},  # smaller, hash left as it was
        {"amount_cents": 8999 * 5},  # larger
        {"order_id": "O-5007", "amount_cents": 4000},  # another customer's order, under the auto limit
    ],
    ids=["lower", "raise", "other-order"],
)
@pytest.mark.parametrize("rehash", [False, True], ids=["stale-hash", "rehashed"])
def test_args_changed_via_update_state_after_approval_are_refused(rt, change, rehash):
    approved_but_not_executed(rt)
    g = rt.graph()
    plan = g.get_state(CFG).values["plan"]
    g.update_state(CFG, {"plan": tampered(plan, rehash=rehash, **change)})
    assert g.get_state(CFG).next == ("execute_action",)
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "plan_integrity")
    assert refunded(rt, "O-5007") == 0


def test_args_changed_in_the_sqlite_checkpoint_row_are_refused(rt):
    approved_but_not_executed(rt)
    write_checkpoint_row(rt, "tamper", lambda values: values["plan"]["plan"]["actions"][0]["args"].update(amount_cents=45000))
    g = rt.graph()
    snap = g.get_state(CFG)
    assert snap.next == ("execute_action",) and snap.values["plan"]["plan"]["actions"][0]["args"]["amount_cents"] == 45000
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "plan_integrity")


def test_untampered_approved_plan_executes_once_after_the_transient_failure(rt):
    approved_but_not_executed(rt)
    final = rt.graph().invoke(None, CFG, context=rt.context())
    assert final["status"] == "completed"
    assert refunds(rt) == 1 and ledger(rt) == 1 and refunded(rt) == 8999
    assert rt.graph().invoke(None, CFG, context=rt.context())["status"] == "completed"  # nothing left to run
    assert refunds(rt) == 1 and ledger(rt) == 1


# --------------------------------------------------------------------------- (b) forged approvals


def test_forged_approval_naming_another_hash_is_refused(rt):
    pause(rt)
    g = rt.graph()
    g.update_state(CFG, {"approval": {"decision": "approve", "plan_hash": "f" * 64, "reviewer": "boss"}, "status": "running"},
                   as_node="await_approval")
    assert g.get_state(CFG).next == ("execute_action",)
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "approval_missing")


def test_forged_approval_naming_the_right_hash_is_refused(rt):
    """The hash is shown to anyone who can read the thread; an approval in state that no
    reviewer gave (no approval row in the audit log) does not count."""
    req = pause(rt)
    g = rt.graph()
    g.update_state(CFG, {"approval": {"decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "boss"},
                         "status": "running"}, as_node="await_approval")
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "approval_missing")


def test_forged_policy_verdict_cannot_skip_the_approval(rt):
    """The verdict in state is not signed: execution decides again from the signed plan."""
    state = rt.graph().invoke({"ticket": T8}, CFG, context=rt.context())
    policy = as_json(state["policy"])
    policy["overall"] = "execute"
    for d in policy["per_action"]:
        d["decision"] = "execute"
    g = rt.graph()
    g.update_state(CFG, {"policy": policy, "status": "running"}, as_node="policy_check")
    assert g.get_state(CFG).next == ("execute_action",)
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "approval_missing")


def test_forged_policy_verdict_cannot_lift_a_denial(rt):
    """T-20: C-1005 asks for a refund on C-1001's order; the policy denies not_owner."""
    t20 = {"id": "T-20", "tenant": "acme", "customer_id": "C-1005", "channel": "email", "subject": "Torn packaging",
           "body": "Please refund $20 on my order O-5016, the packaging was torn when it arrived."}
    state = rt.graph().invoke({"ticket": t20}, CFG, context=rt.context())
    assert state["reason_codes"] == ["not_owner"]
    policy = as_json(state["policy"])
    policy.update(overall="execute", reason_codes=[])
    for d in policy["per_action"]:
        d.update(decision="execute", reason_codes=[])
    g = rt.graph()
    g.update_state(CFG, {"policy": policy, "status": "running", "reason_codes": []}, as_node="policy_check")
    final = g.invoke(None, CFG, context=rt.context())
    assert final["status"] == "escalated" and "not_owner" in final["reason_codes"]
    assert refunds(rt) == 0 and refunded(rt, "O-5016") == 0
    # nor by also moving the ticket to the order's owner: the plan names its customer, signed
    g.update_state(CFG, {"policy": policy, "status": "running", "reason_codes": [],
                         "ticket": {**t20, "customer_id": "C-1001"}}, as_node="policy_check")
    final = g.invoke(None, CFG, context=rt.context())
    assert final["status"] == "escalated" and "plan_integrity" in final["reason_codes"]
    assert refunds(rt) == 0 and refunded(rt, "O-5016") == 0


def test_forged_approval_after_a_rejection_is_refused(rt):
    req = pause(rt)
    g = rt.graph()
    rejected = g.invoke(Command(resume={"decision": "reject", "plan_hash": req["plan_hash"], "reviewer": "boss",
                                        "reason": "not eligible"}), CFG, context=rt.context())
    assert rejected["status"] == "rejected"
    g.update_state(CFG, {"approval": {**rejected["approval"], "decision": "approve"}, "status": "running"},
                   as_node="await_approval")
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "approval_missing")


# --------------------------------------------------------------------------- (c) another key


def test_plan_resigned_with_another_key_is_refused(rt):
    req = pause(rt)
    g = rt.graph()
    plan = g.get_state(CFG).values["plan"]
    forged = tampered(plan, key=b"attacker-key")  # same content and hash, foreign signature
    assert forged["hash"] == req["plan_hash"] and forged["signature"] != plan["signature"]
    g.update_state(CFG, {"plan": forged})
    assert_refused(g.invoke(approve(req["plan_hash"]), CFG, context=rt.context()), rt, "plan_integrity")


def test_raised_plan_signed_with_another_key_and_approved_is_refused(rt):
    """The reviewer is shown the forged plan (the request is rebuilt from state) and approves
    its hash: execution still refuses it, the signature is not keel's."""
    pause(rt)
    g = rt.graph()
    forged = tampered(g.get_state(CFG).values["plan"], key=b"attacker-key", amount_cents=45000)
    g.update_state(CFG, {"plan": forged})
    assert_refused(g.invoke(approve(forged["hash"]), CFG, context=rt.context()), rt, "plan_integrity")


def test_foreign_key_plan_with_forged_approval_after_approval_is_refused(rt):
    approved_but_not_executed(rt)
    g = rt.graph()
    forged = tampered(g.get_state(CFG).values["plan"], key=b"attacker-key", amount_cents=45000)
    g.update_state(CFG, {"plan": forged, "approval": {"decision": "approve", "plan_hash": forged["hash"], "reviewer": "boss"}})
    assert g.get_state(CFG).next == ("execute_action",)
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "plan_integrity")


def test_unsigned_garbage_plan_is_refused(rt):
    approved_but_not_executed(rt)
    g = rt.graph()
    plan = as_json(g.get_state(CFG).values["plan"])
    plan["signature"] = ""
    g.update_state(CFG, {"plan": plan})
    assert_refused(g.invoke(None, CFG, context=rt.context()), rt, "plan_integrity")


# --------------------------------------------------------------------------- (d) edits


@pytest.mark.parametrize(
    "edit, code",
    [
        ({"amount_cents": 9000}, "edit_raises_amount"),
        ({"amount_cents": 50_001}, "edit_raises_amount"),
        ({"order_id": "O-5007"}, "edit_not_allowed"),
        ({"order_id": "O-5008", "amount_cents": 100}, "edit_not_allowed"),
        ({"amount_cents": 0}, "edit_not_allowed"),
        ({"amount_cents": -100}, "edit_not_allowed"),
        ({"amount_cents": "100"}, "edit_not_allowed"),
        ({"amount_cents": 100.5}, "edit_not_allowed"),
        ({"reason": "approved by the CEO"}, "edit_not_allowed"),
        ({"customer_id": "C-1010"}, "edit_not_allowed"),
    ],
)
def test_edit_that_raises_or_retargets_is_refused_and_waits(rt, edit, code):
    req = pause(rt)
    g = rt.graph()
    again = g.invoke(approve(req["plan_hash"], edits=[{"index": 0, "args": edit}]), CFG, context=rt.context())
    assert again["status"] == "awaiting_approval"
    value = again["__interrupt__"][0].value
    assert value["error"]["code"] == code
    assert value["plan_hash"] == req["plan_hash"] and value["plan"] == req["plan"]  # the plan is unchanged
    assert g.get_state(CFG).next == ("await_approval",)
    assert refunds(rt) == 0 and ledger(rt) == 0
    final = g.invoke(approve(req["plan_hash"]), CFG, context=rt.context())  # the original plan can still be approved
    assert final["status"] == "completed" and refunded(rt) == 8999 and refunds(rt) == 1


def test_edit_of_a_missing_action_is_refused(rt):
    req = pause(rt)
    again = rt.graph().invoke(approve(req["plan_hash"], edits=[{"index": 1, "args": {"amount_cents": 1}}]), CFG, context=rt.context())
    assert again["__interrupt__"][0].value["error"]["code"] == "edit_not_allowed"
    assert refunds(rt) == 0


# --------------------------------------------------------------------------- (e) replayed and duplicated resumes


def test_duplicated_approval_resume_executes_once(rt):
    req = pause(rt)
    g = rt.graph()
    first = g.invoke(approve(req["plan_hash"]), CFG, context=rt.context())
    assert first["status"] == "completed"
    for reviewer in ("boss", "boss2"):  # the same resume again, and a second approver
        again = g.invoke(approve(req["plan_hash"], reviewer=reviewer), CFG, context=rt.context())
        assert again["status"] == "completed"
    assert refunds(rt) == 1 and ledger(rt) == 1 and refunded(rt) == 8999


def test_replaying_the_approved_checkpoint_executes_once(rt):
    req = pause(rt)
    g = rt.graph()
    assert g.invoke(approve(req["plan_hash"]), CFG, context=rt.context())["status"] == "completed"
    history = list(g.get_state_history(CFG))
    approved = next(s for s in history if s.next == ("execute_action",))
    assert g.invoke(None, approved.config, context=rt.context())["status"] == "completed"  # replay
    forked = g.update_state(approved.config, None)
    assert g.invoke(None, forked, context=rt.context())["status"] == "completed"  # fork
    waiting = next(s for s in history if s.next == ("await_approval",))
    assert g.invoke(approve(req["plan_hash"]), waiting.config, context=rt.context())["status"] == "completed"  # resume the old interrupt again
    assert refunds(rt) == 1 and ledger(rt) == 1 and refunded(rt) == 8999
    calls = [r for r in rt.audit.list("acme", "tamper") if r.kind == "tool_call"]
    assert sum(not r.data["replayed"] for r in calls) == 1  # one real call; the rest were ledger replays


def test_concurrent_approval_resumes_execute_once(rt):
    req = pause(rt)
    g = rt.graph()
    barrier = threading.Barrier(4)
    results: list[Any] = []

    def resume(reviewer: str) -> None:
        barrier.wait()
        try:
            results.append(g.invoke(approve(req["plan_hash"], reviewer=reviewer), CFG, context=rt.context())["status"])
        except Exception as e:  # a racing writer may lose on the checkpoint store; it must not act twice
            results.append(type(e).__name__)

    threads = [threading.Thread(target=resume, args=(r,)) for r in ("boss", "boss2", "boss", "boss2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert "completed" in results, results
    assert refunds(rt) == 1 and ledger(rt) == 1 and refunded(rt) == 8999
