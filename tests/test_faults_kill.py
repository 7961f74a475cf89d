"""SIGKILL a `keel worker` at every node boundary of the real support graph, on the real
Postgres: each run completes on another worker, resumed from the last durable checkpoint
(the nodes before the boundary never run again), and each side effect happens exactly once
(tool ledger and back-office rows counted).

Every scenario gets a tenant and thread of its own; they all run at once (a background
killer SIGKILLs each worker the moment it stops at its armed point and starts a
replacement), then each test checks one scenario's outcome.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support.faults_cluster import WALL_CLOCK_S, Tenant, faults_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# (boundary, point): ``enter:N`` is between the node before N (its checkpoint durable) and N
AUTO_BOUNDARIES = [
    ("start", "enter:triage"),
    ("triage", "enter:retrieve_context"),
    ("retrieve_context", "enter:propose_action"),
    ("propose_action", "enter:policy_check"),
    ("policy_check", "enter:execute_action"),
    ("execute_action-refund-committed", "effect:issue_refund"),
    ("execute_action", "enter:verify"),
    ("verify", "enter:complete"),
    ("complete", "finish"),
]
"""T-1: a refund the policy executes without approval (O-5001, 45.99)."""

RESUME_BOUNDARIES = [
    ("policy_check-before-interrupt", None),  # the first run dies before the interrupt
    ("resume-start", "enter:await_approval"),
    ("await_approval", "enter:execute_action"),
    ("execute_action-refund-committed", "effect:issue_refund"),
    ("execute_action", "enter:verify"),
    ("complete", "finish"),
]
"""T-8: a refund that needs approval (O-5002, 89.99); the resume run dies at ``point``."""

AUTO_NODES = ["triage", "retrieve_context", "propose_action", "policy_check", "execute_action", "verify", "complete"]


def _entries(c, tid: str) -> list[str]:
    return [r[0] for r in c.rows("SELECT node FROM fault_node_entries WHERE thread_id = %s ORDER BY at", tid)]


def _expected_nodes(nodes: list[str], point: str | None) -> list[str]:
    """The node sequence when the worker died at ``point``: only the cut-off node runs twice."""
    out = list(nodes)
    if point and point.startswith("enter:"):
        node = point.split(":", 1)[1]
        i = len(out) - 1 - out[::-1].index(node)  # the last entry (the resume's await_approval)
        out.insert(i, node)
    elif point and point.startswith("effect:"):
        out.insert(out.index("execute_action"), "execute_action")
    return out


@pytest.fixture(scope="module")
def scenarios(faults_cluster) -> dict[str, dict[str, Any]]:
    """Run every kill scenario at once; returns their outcomes by id."""
    c = faults_cluster
    killed = c.start_killer()
    out: dict[str, dict[str, Any]] = {}
    try:
        with ThreadPoolExecutor(16) as ex:
            futures = {f"auto:{b}": ex.submit(_auto, c, p) for b, p in AUTO_BOUNDARIES}
            # the worker hangs past the run's wall-clock budget before it dies (a long outage)
            futures["late"] = ex.submit(_auto, c, "enter:execute_action", WALL_CLOCK_S + 1.0)
            futures.update({f"resume:{b}": ex.submit(_resume, c, p) for b, p in RESUME_BOUNDARIES})
            for k, f in futures.items():
                out[k] = f.result()
    finally:
        c.stop_killer()
    for o in out.values():
        o["killed"] = {p: killed.get((o["tid"], p)) for p in o["points"]}
    assert not c.kill_errors, c.kill_errors
    return out


def _auto(c, point: str, pause: float = 0.0) -> dict[str, Any]:
    t = Tenant(c)
    tid = t.new_thread()
    if pause:
        c.arm_pause(tid, point, pause)
    c.arm_stop(tid, point)
    rid = t.start(tid, "T-1")
    run = t.wait(tid, rid, timeout=120)
    v = t.values(tid)
    return {"t": t, "tid": tid, "points": [point], "runs": [run],
            "why": (v.get("status"), v.get("reason_codes"), _entries(c, tid), run)}


def _resume(c, point: str | None) -> dict[str, Any]:
    t = Tenant(c)
    tid = t.new_thread()
    first_point = "enter:await_approval" if point is None else None
    if first_point:
        c.arm_stop(tid, first_point)
    rid = t.start(tid, "T-8")
    first = t.wait(tid, rid, timeout=120)
    awaiting = t.values(tid)
    before = t.effects()
    req = t.pending(tid)
    if point:
        c.arm_stop(tid, point)
    r = t.approve(tid, req["plan_hash"])
    assert r.status_code == 200, r.text
    second = t.wait(tid, r.json()["run"]["run_id"], timeout=120)
    return {"t": t, "tid": tid, "points": [p for p in (first_point, point) if p], "runs": [first, second],
            "awaiting": awaiting, "before_approval": before, "plan_hash": req["plan_hash"], "point": point}


def _assert_run(run: dict, killed: int | None) -> None:
    assert run["status"] == "success", run
    if killed is None:
        assert run["attempts"] == 1, run
    else:
        assert run["attempts"] == 2, run
        assert run["worker"] and run["worker"].split(":")[1] != str(killed), run


def _assert_audit_intact(t: Tenant) -> None:
    r = httpx.get(f"{t.c.urls[0]}/audit/verify", headers=t.h("admin"), timeout=30)
    assert r.status_code == 200 and r.json().get("ok") is True, r.text


@pytest.mark.parametrize("boundary,point", AUTO_BOUNDARIES, ids=[b for b, _ in AUTO_BOUNDARIES])
def test_sigkill_at_each_boundary_of_an_auto_executed_refund(scenarios, faults_cluster, boundary, point):
    s = scenarios[f"auto:{boundary}"]
    t, tid = s["t"], s["tid"]
    killed = s["killed"][point]
    assert killed is not None, f"no worker stopped at {point}: {s['why']}"
    _assert_run(s["runs"][0], killed)
    values = t.values(tid)
    assert values["status"] == "completed", (values["status"], values.get("reason_codes"), values.get("budget"))
    assert [a["state"] for a in values["actions"]] == ["executed"]
    assert t.refunds("O-5001") == 1
    assert t.effects() == {"tool_ledger": 1, "refunds": 1}
    assert t.order("O-5001")["refunded_cents"] == 4599
    # resumed from the last checkpoint: only the node cut off at the boundary entered twice
    assert _entries(faults_cluster, tid) == _expected_nodes(AUTO_NODES, point)
    _assert_audit_intact(t)


def test_a_run_resumed_after_its_wall_clock_budget_completes(scenarios, faults_cluster):
    """The worker dies after POLICY_CHECK having hung longer than the policy's wall-clock
    cap: the time the run spent waiting for its lease to expire is not run time (as days
    waiting for an approval are not), so the resumed run executes, verifies and completes
    instead of escalating ``budget_exceeded`` after its refund."""
    s = scenarios["late"]
    t, tid = s["t"], s["tid"]
    _assert_run(s["runs"][0], s["killed"]["enter:execute_action"])
    values = t.values(tid)
    assert values["status"] == "completed", (values["status"], values.get("reason_codes"))
    assert t.effects() == {"tool_ledger": 1, "refunds": 1}
    assert _entries(faults_cluster, tid) == _expected_nodes(AUTO_NODES, "enter:execute_action")


@pytest.mark.parametrize("boundary,point", RESUME_BOUNDARIES, ids=[b for b, _ in RESUME_BOUNDARIES])
def test_sigkill_around_the_approval_resume(scenarios, faults_cluster, boundary, point):
    s = scenarios[f"resume:{boundary}"]
    t, tid = s["t"], s["tid"]
    first, second = s["runs"]
    # the first run parks at the approval interrupt (on another worker if its worker died)
    _assert_run(first, s["killed"].get("enter:await_approval") if point is None else None)
    assert s["awaiting"]["status"] == "awaiting_approval"
    assert s["before_approval"] == {"tool_ledger": 0, "refunds": 0}, "nothing executes before the approval"
    # the approved resume completes (on another worker if its worker died)
    killed = s["killed"].get(point) if point else None
    if point:
        assert killed is not None, f"no worker stopped at {point}"
    _assert_run(second, killed)
    values = t.values(tid)
    assert values["status"] == "completed", (values["status"], values.get("reason_codes"), values.get("budget"))
    assert values["approval"]["decision"] == "approve" and values["approval"]["reviewer"] == "approver-1"
    assert t.refunds("O-5002") == 1
    assert t.effects() == {"tool_ledger": 1, "refunds": 1}
    assert t.order("O-5002")["refunded_cents"] == 8999
    assert faults_cluster.count("SELECT COUNT(*) FROM api_decisions WHERE thread_id = %s", tid) == 1
    nodes = ["triage", "retrieve_context", "propose_action", "policy_check", "await_approval", "await_approval",
             "execute_action", "verify", "complete"]
    expected = _expected_nodes(nodes, point) if point else _expected_nodes(nodes[:5], "enter:await_approval") + nodes[5:]
    assert _entries(faults_cluster, tid) == expected
    # approving again after the fact returns the original run; nothing executes twice
    again = t.approve(tid, s["plan_hash"])
    assert again.status_code == 200 and again.json()["idempotent_replay"] is True, again.text
    time.sleep(0.2)
    assert t.refunds("O-5002") == 1
    _assert_audit_intact(t)


def test_a_worker_that_lost_its_lease_while_frozen_cannot_write_on_the_thread(faults_cluster):
    """Split brain: the worker running the refund is frozen (SIGSTOP, as a VM pause or a
    stalled database would) past its lease; another worker takes the run over and finishes
    it. When the frozen worker wakes up it must not write its stale checkpoints on the
    thread (they would become the thread's latest: "running" forever under a finished
    run); its refund is a ledger replay, not a second refund."""
    import os
    import signal

    from support.faults_cluster import LEASE_S

    c = faults_cluster
    t = Tenant(c)
    tid = t.new_thread()
    c.arm_pause(tid, "enter:execute_action", 1.0)
    rid = t.start(tid, "T-1")
    zombie = c.wait_paused(tid, "enter:execute_action")
    os.kill(zombie, signal.SIGSTOP)
    try:
        run = t.wait(tid, rid, timeout=60)  # taken over once the lease expired
        assert run["status"] == "success" and run["attempts"] == 2, run
        assert run["worker"].split(":")[1] != str(zombie)
        assert t.values(tid)["status"] == "completed"
    finally:
        os.kill(zombie, signal.SIGCONT)
    time.sleep(LEASE_S + 2.0)  # the woken worker finishes its step and notices the lost lease
    assert zombie in c.worker_pids(), "the worker survives losing a lease"
    state = httpx.get(f"{c.urls[0]}/threads/{tid}/state", headers=t.h(), timeout=30).json()
    assert state["values"]["status"] == "completed" and state["next"] == [], (state["values"]["status"], state["next"])
    assert t.run(tid, rid)["status"] == "success"
    assert t.effects() == {"tool_ledger": 1, "refunds": 1}
    assert t.order("O-5001")["refunded_cents"] == 4599
