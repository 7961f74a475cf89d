"""Races on an approval, on the real Postgres through two `keel serve` processes: two
reviewers approving the same plan at the same moment (exactly one executes), and a resume
racing a cancel (one wins, cleanly: never both, never a 5xx)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support.faults_cluster import Tenant, faults_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _awaiting_threads(c, n: int) -> list[tuple[Tenant, str, str]]:
    """``n`` threads (a tenant each) parked at T-8's approval; ``(tenant, thread, plan_hash)``."""

    def one(_: int) -> tuple[Tenant, str, str]:
        t = Tenant(c)
        tid = t.new_thread()
        rid = t.start(tid, "T-8")
        assert t.wait(tid, rid)["status"] == "success"
        return t, tid, t.pending(tid)["plan_hash"]

    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(one, range(n)))


def _at_once(*calls) -> list[Any]:
    """Run the callables in threads released by one barrier; their results in order."""
    barrier = threading.Barrier(len(calls))
    out: list[Any] = [None] * len(calls)

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - reported by the assertions
            out[i] = e

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return out


def _resume_runs(c, tid: str) -> list[tuple]:
    return c.rows("SELECT run_id, status FROM api_runs WHERE thread_id = %s AND kind = 'resume' ORDER BY created_at", tid)


def test_two_reviewers_approve_the_same_plan_at_the_same_moment(faults_cluster):
    c = faults_cluster
    cases = _awaiting_threads(c, 12)
    clients = [httpx.Client(timeout=60), httpx.Client(timeout=60)]
    try:
        answers = []
        for i, (t, tid, plan_hash) in enumerate(cases):
            second = "approver" if i >= 10 else "approver2"  # the last two: one reviewer double-submitting
            a, b = _at_once(lambda: t.approve(tid, plan_hash, "approver", server=0, client=clients[0]),
                            lambda: t.approve(tid, plan_hash, second, server=1, client=clients[1]))
            answers.append((a, b))
    finally:
        for cl in clients:
            cl.close()

    for (t, tid, plan_hash), (a, b) in zip(cases, answers):
        for r in (a, b):
            assert isinstance(r, httpx.Response), r
            assert r.status_code < 500, r.text
        ok = [r for r in (a, b) if r.status_code == 200 and not r.json()["idempotent_replay"]]
        assert len(ok) == 1, [(r.status_code, r.text) for r in (a, b)]
        other = b if ok[0] is a else a
        if other.status_code == 200:  # the same reviewer repeating itself gets the original run
            assert other.json()["idempotent_replay"] is True and other.json()["run"]["run_id"] == ok[0].json()["run"]["run_id"]
        else:
            assert other.status_code == 409, other.text
            assert other.json()["code"] in ("thread_busy", "already_decided"), other.text
        run = t.wait(tid, ok[0].json()["run"]["run_id"])
        assert run["status"] == "success", run
        assert len(_resume_runs(c, tid)) == 1
        assert c.count("SELECT COUNT(*) FROM api_decisions WHERE thread_id = %s", tid) == 1
        values = t.values(tid)
        assert values["status"] == "completed", values
        assert values["approval"]["reviewer"] == ok[0].json()["reviewer"]
        assert t.refunds("O-5002") == 1 and t.effects() == {"tool_ledger": 1, "refunds": 1}


def test_approve_racing_reject_one_decision_wins(faults_cluster):
    c = faults_cluster
    for t, tid, plan_hash in _awaiting_threads(c, 4):
        url = c.urls
        a, b = _at_once(
            lambda: httpx.post(f"{url[0]}/approvals/{tid}/approve", headers=t.h("approver"), timeout=60,
                               json={"plan_hash": plan_hash, "reason": "ok"}),
            lambda: httpx.post(f"{url[1]}/approvals/{tid}/reject", headers=t.h("approver2"), timeout=60,
                               json={"plan_hash": plan_hash, "reason": "not eligible"}))
        assert all(isinstance(r, httpx.Response) and r.status_code < 500 for r in (a, b)), (a, b)
        won = [r for r in (a, b) if r.status_code == 200]
        assert len(won) == 1 and [r.status_code for r in (a, b) if r not in won] == [409], [a.text, b.text]
        run = t.wait(tid, won[0].json()["run"]["run_id"])
        assert run["status"] == "success"
        values = t.values(tid)
        if won[0] is a:
            assert values["status"] == "completed" and t.refunds("O-5002") == 1
        else:
            assert values["status"] == "rejected" and t.effects() == {"tool_ledger": 0, "refunds": 0}


def _cancel(t: Tenant, tid: str, rid: str, server: int) -> httpx.Response:
    return httpx.post(f"{t.c.urls[server]}/threads/{tid}/runs/{rid}/cancel", headers=t.h("approver"), timeout=60)


def _assert_still_awaiting_then_approvable(t: Tenant, tid: str, plan_hash: str) -> None:
    """Nothing executed, the plan waits for a decision (listed), and approving it executes it once."""
    c = t.c
    assert t.effects() == {"tool_ledger": 0, "refunds": 0}
    assert t.values(tid)["status"] == "awaiting_approval"
    listed = httpx.get(f"{c.urls[0]}/approvals", headers=t.h("approver"), timeout=30).json()
    assert tid in [p["thread_id"] for p in listed["items"]], "a cancelled resume leaves the approval pending"
    again = t.approve(tid, plan_hash)
    assert again.status_code == 200 and again.json()["idempotent_replay"] is False, again.text
    assert t.wait(tid, again.json()["run"]["run_id"])["status"] == "success"
    assert t.values(tid)["status"] == "completed"
    assert t.refunds("O-5002") == 1 and t.effects() == {"tool_ledger": 1, "refunds": 1}


def test_cancel_wins_over_a_queued_resume(faults_cluster):
    """The workers are frozen (SIGSTOP) so the approved resume is still queued when the
    cancel lands: the run ends cancelled, the decision is withdrawn with it, and the plan
    is still pending (listed, approvable, executed once when approved again)."""
    c = faults_cluster
    (t, tid, plan_hash), = _awaiting_threads(c, 1)
    frozen = c.freeze_workers()
    try:
        r = t.approve(tid, plan_hash)
        assert r.status_code == 200, r.text
        rid = r.json()["run"]["run_id"]
        cancel = httpx.post(f"{c.urls[1]}/threads/{tid}/runs/{rid}/cancel?wait=1", headers=t.h("approver"), timeout=10)
    finally:
        c.thaw_workers(frozen)
    assert cancel.status_code == 200 and cancel.json()["status"] == "interrupted", cancel.text
    assert c.count("SELECT COUNT(*) FROM api_decisions WHERE thread_id = %s", tid) == 0
    _assert_still_awaiting_then_approvable(t, tid, plan_hash)


def test_cancel_of_an_executing_approval_is_refused(faults_cluster):
    """Once a worker is applying the approved plan (here: paused right before
    EXECUTE_ACTION) a cancel is refused with 409 and the plan executes exactly once;
    honouring it would leave an approved plan half done (or executed under a cancelled run)."""
    c = faults_cluster
    (t, tid, plan_hash), = _awaiting_threads(c, 1)
    c.arm_pause(tid, "enter:execute_action", 2.0)
    r = t.approve(tid, plan_hash)
    assert r.status_code == 200, r.text
    rid = r.json()["run"]["run_id"]
    c.wait_paused(tid, "enter:execute_action")
    cancel = httpx.post(f"{c.urls[0]}/threads/{tid}/runs/{rid}/cancel", headers=t.h("approver"), timeout=10)
    assert cancel.status_code == 409 and cancel.json()["code"] == "approval_executing", cancel.text
    run = t.wait(tid, rid)
    assert run["status"] == "success", run
    assert t.values(tid)["status"] == "completed"
    assert t.refunds("O-5002") == 1 and t.effects() == {"tool_ledger": 1, "refunds": 1}


def test_resume_racing_a_cancel_one_wins_cleanly(faults_cluster):
    """Approve (the resume run is queued), then cancel that run after 0 to 300 ms: either the
    approved plan executes (one refund) and the cancel is answered cleanly, or the run is
    cancelled before anything executed and the plan is still waiting for a decision:
    approving it again then executes it once."""
    c = faults_cluster
    rnd = random.Random(4)
    outcomes = []
    for i, (t, tid, plan_hash) in enumerate(_awaiting_threads(c, 10)):
        r = t.approve(tid, plan_hash, server=i % 2)
        assert r.status_code == 200, r.text
        rid = r.json()["run"]["run_id"]
        time.sleep(rnd.choice([0, 0, 0.01, 0.03, 0.1, 0.3]))
        cancel = _cancel(t, tid, rid, (i + 1) % 2)
        assert cancel.status_code in (200, 409), cancel.text
        run = t.wait(tid, rid)
        values = t.values(tid)
        refunds = t.refunds("O-5002")
        outcomes.append((run["status"], values["status"], refunds))
        if run["status"] == "success":  # the resume won
            assert values["status"] == "completed" and refunds == 1, (run, values["status"], refunds)
            continue
        # the cancel won: nothing executed, and the plan still waits for a decision
        assert run["status"] == "interrupted" and cancel.status_code == 200, (run, cancel.text)
        _assert_still_awaiting_then_approvable(t, tid, plan_hash)
    print("resume vs cancel outcomes:", outcomes)
