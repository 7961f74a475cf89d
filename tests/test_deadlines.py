"""Approval deadlines (issue 11.6): the pack's ``[approvals] deadline_minutes``,
``assignee_group`` and ``on_deadline`` (required, validated), shown with each pending
approval; at the deadline a worker applies the default (reject ``deadline_passed`` or
escalate) through the same engine path as a reviewer, as actor ``system``, audited, exactly
once however many workers sweep, and never over a reviewer who decided first."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from support.api_fixtures import api_pg_url  # noqa: F401
from support.review_helpers import Tenant, make_runtime, served, wait_for, write_pack

from engine.queue import RunQueue
from engine.review import review_desk, sweep
from guards.pack import DEFAULT_POLICY_PATH, PolicyError, load_policy

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request):
    return request.getfixturevalue("api_pg_url") if request.param == "postgres" else None


# -- the pack ---------------------------------------------------------------------------------
def test_shipped_pack_states_deadline_group_and_default():
    a = load_policy().approvals
    assert (a.deadline_minutes, a.assignee_group, a.on_deadline) == (240, "support-approvers", "escalate")


@pytest.mark.parametrize(("key", "value"), [
    ("deadline_minutes", 0), ("deadline_minutes", -5), ("deadline_minutes", "60"), ("deadline_minutes", 1.5),
    ("deadline_minutes", True), ("deadline_minutes", 60 * 24 * 31),
    ("assignee_group", ""), ("assignee_group", "two words"), ("assignee_group", "x" * 65), ("assignee_group", 7),
    ("on_deadline", "approve"), ("on_deadline", ""), ("on_deadline", ["reject"]),
])
def test_bad_deadline_settings_are_refused_naming_the_field(tmp_path, key, value):
    with pytest.raises(PolicyError, match=key):
        load_policy(write_pack(tmp_path / "bad.toml", **{key: value}))


@pytest.mark.parametrize("key", ["deadline_minutes", "assignee_group", "on_deadline"])
def test_deadline_settings_have_no_silent_default(tmp_path, key):
    text = DEFAULT_POLICY_PATH.read_text()
    line = next(x for x in text.splitlines() if x.startswith(f"{key} ="))
    (tmp_path / "bad.toml").write_text(text.replace(line, ""))
    with pytest.raises(PolicyError, match=key):
        load_policy(tmp_path / "bad.toml")


# -- the API and the worker ---------------------------------------------------------------------
def _pause(client, t: Tenant, ticket: str = "T-8") -> tuple[str, str]:
    out = t.run(client, ticket)
    return out["thread_id"], out["result"]["__interrupt__"][0]["value"]["plan_hash"]


def _expire(rt, tid: str) -> None:
    """The deadline passes (moved into the past rather than waiting minutes)."""
    assert rt.db.execute("UPDATE approval_deadlines SET deadline_ts = 0 WHERE thread_id = ?", (tid,)) == 1


def test_pending_approvals_show_deadline_and_assignee_group(db_url, tmp_path):
    pack = write_pack(tmp_path / "pack.toml", deadline_minutes=90, assignee_group="tier2")
    with served(db_url, tmp_path / "d", pack) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = _pause(client, t)
        (item,) = [i for i in client.get("/approvals", headers=t.h["approver"]).json()["items"] if i["thread_id"] == tid]
        assert item["assignee_group"] == "tier2" and item["on_deadline"] == "escalate"
        d = review_desk(rt).deadlines.get(t.name, tid, plan_hash)
        requested = datetime.fromisoformat(d.requested_at.replace("Z", "+00:00"))
        assert datetime.fromisoformat(item["deadline"].replace("Z", "+00:00")) - requested == timedelta(minutes=90)
        detail = client.get(f"/approvals/{tid}", headers=t.h["approver"]).json()
        assert detail["deadline"] == item["deadline"] and detail["assignee_group"] == "tier2"


def test_deadline_rejects_as_system_when_the_pack_says_reject(db_url, tmp_path):
    pack = write_pack(tmp_path / "pack.toml", on_deadline="reject")
    with served(db_url, tmp_path / "d", pack, review_sweep_s=0.05) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = _pause(client, t)
        _expire(rt, tid)
        th = wait_for(lambda: (lambda r: r if r["status"] == "idle" else None)(
            client.get(f"/threads/{tid}", headers=t.h["requester"]).json()))
        assert th["values"]["status"] == "rejected"
        assert th["values"]["approval"]["reviewer"] == "system" and th["values"]["approval"]["reason"] == "deadline_passed"
        assert rt.backoffice.get_order(t.name, "O-5002")["refunded_cents"] == 0
        rows = rt.audit.list(t.name, thread_id=tid)
        system = [r for r in rows if r.kind == "approval" and r.actor == "system"]
        assert [r.data.get("event") for r in system].count("deadline_passed") == 1
        assert any(r.data.get("decision") == "reject" for r in system if r.data.get("event") != "deadline_passed")
        assert rt.audit.verify(t.name).ok
        assert all(i["thread_id"] != tid for i in client.get("/approvals", headers=t.h["approver"]).json()["items"])
        # a reviewer arriving late finds it decided
        r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash}, headers=t.h["approver"])
        assert r.status_code == 409, r.text
        # not a human label: no feedback example
        assert not [e for e in review_desk(rt).feedback.list(t.name) if e.thread_id == tid]


def test_deadline_escalates_to_a_person_when_the_pack_says_escalate(db_url, tmp_path):
    with served(db_url, tmp_path, review_sweep_s=0.05) as (client, rt):
        t = Tenant(rt)
        tid, _ = _pause(client, t)
        _expire(rt, tid)
        th = wait_for(lambda: (lambda r: r if r["status"] == "idle" else None)(
            client.get(f"/threads/{tid}", headers=t.h["requester"]).json()))
        assert th["values"]["status"] == "escalated" and th["values"]["reason_codes"] == ["deadline_passed"]
        assert rt.backoffice.get_order(t.name, "O-5002")["refunded_cents"] == 0
        (item,) = [i for i in client.get("/escalations", headers=t.h["approver"]).json()["items"] if i["thread_id"] == tid]
        assert item["reason_codes"] == ["deadline_passed"]
        rows = rt.audit.list(t.name, thread_id=tid)
        assert [(r.actor, r.data["event"]) for r in rows if r.data.get("event") == "deadline_passed"] == [
            ("system", "deadline_passed")]


def test_a_reviewer_who_decided_first_wins_over_the_deadline(db_url, tmp_path):
    with served(db_url, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = _pause(client, t)
        r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash, "wait": True}, headers=t.h["approver"])
        assert r.status_code == 200 and r.json()["result"]["status"] == "completed", r.text
        _expire(rt, tid)
        report = sweep(rt, RunQueue(rt.db), "w-test")
        assert report.deadlines_applied == 0
        assert review_desk(rt).deadlines.get(t.name, tid, plan_hash).state == "superseded"
        runs = rt.db.fetchone("SELECT COUNT(*) AS n FROM api_runs WHERE thread_id = ? AND created_by = 'system'", (tid,))
        assert runs["n"] == 0


def test_each_expired_deadline_is_applied_exactly_once_across_workers(db_url, tmp_path):
    with served(db_url, tmp_path / "d") as (client, rt):
        t = Tenant(rt)
        tids = [_pause(client, t, ticket)[0] for ticket in ("T-8", "T-14", "T-21", "T-23")]
    runtimes = [make_runtime(db_url, tmp_path / "d") for _ in range(3)]
    try:
        for tid in tids:
            _expire(runtimes[0], tid)
        barrier = threading.Barrier(len(runtimes) * 2)
        applied: list[int] = []

        def work(rt, wid: str) -> None:
            barrier.wait()
            applied.append(sweep(rt, RunQueue(rt.db), wid).deadlines_applied)

        workers = [threading.Thread(target=work, args=(rt, f"w{i}-{j}")) for i, rt in enumerate(runtimes) for j in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sum(applied) == len(tids), applied
        db = runtimes[0].db
        for tid in tids:
            n = db.fetchone("SELECT COUNT(*) AS n FROM api_runs WHERE thread_id = ? AND created_by = 'system'", (tid,))
            assert n["n"] == 1, tid
        rows = [r for r in runtimes[0].audit.list(t.name) if r.data.get("event") == "deadline_passed"]
        assert sorted(r.thread_id for r in rows) == sorted(tids)
        assert sum(sweep(rt, RunQueue(rt.db), "late").deadlines_applied for rt in runtimes) == 0
    finally:
        for rt in runtimes:
            rt.close()


def test_a_claim_whose_worker_died_is_released_and_applied_later(tmp_path):
    """A worker that claimed a deadline and died before queueing the decision does not
    leave the plan waiting forever: after five minutes the claim is released."""
    with served(None, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = _pause(client, t)
    rt = make_runtime(None, tmp_path)
    try:
        desk = review_desk(rt)
        _expire(rt, tid)
        (d,) = desk.deadlines.claim_expired("dead-worker")  # ...and the worker dies here
        assert sweep(rt, RunQueue(rt.db), "w2").deadlines_applied == 0  # a fresh claim is left alone
        rt.db.execute("UPDATE approval_deadlines SET claimed_ts = claimed_ts - 301 WHERE thread_id = ?", (tid,))
        assert sweep(rt, RunQueue(rt.db), "w2").deadlines_applied == 1
        assert desk.deadlines.get(t.name, tid, plan_hash).state == "applied"
    finally:
        rt.close()


def test_the_deadline_exists_before_the_run_is_recorded_as_finished(db_url, tmp_path, monkeypatch):
    """Whatever a run's end wakes (a ``runs/wait`` client, a reviewer's list, the sweep) finds
    its approval deadline: the worker registers it before it records the run's outcome."""
    from engine.queue.leases import Leases

    seen: list[bool] = []
    real = Leases.finish

    def finish(self, run, worker_id, status, thread_status, error=None, interrupts=None):
        if interrupts:
            plan_hash = interrupts[0]["value"]["plan_hash"]
            seen.append(review_desk(rt).deadlines.get(run["tenant"], run["thread_id"], plan_hash) is not None)
        return real(self, run, worker_id, status, thread_status, error, interrupts)

    monkeypatch.setattr(Leases, "finish", finish)
    with served(db_url, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid, plan_hash = _pause(client, t)
        assert seen == [True]
        assert review_desk(rt).deadlines.get(t.name, tid, plan_hash).state == "pending"
