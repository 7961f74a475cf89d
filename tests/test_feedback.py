"""Feedback as evaluation data (issue 11.7): every approve, reject, edit and escalation
resolution is stored, DLP-redacted, as a labelled example in the golden set's format, and
``keel feedback export`` writes a folder that ``keel eval`` runs as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.api_fixtures import api_pg_url  # noqa: F401
from support.api_helpers import demo_fixtures
from support.review_helpers import Tenant, keel_cli as _keel, served, wait_for

from engine.review import review_desk

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
EMAIL = "jane.roe@example.com"


@pytest.fixture(params=BACKENDS)
def db_url(request):
    return request.getfixturevalue("api_pg_url") if request.param == "postgres" else None


def _pause(client, t: Tenant, ticket: str) -> tuple[str, str]:
    out = t.run(client, ticket)
    return out["thread_id"], out["result"]["__interrupt__"][0]["value"]["plan_hash"]



def test_decisions_become_redacted_examples_that_export_to_a_golden_set_keel_eval_runs(
        db_url, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    with served(db_url, data) as (client, rt):
        t = Tenant(rt)
        h = t.h["approver"]
        approved, ph1 = _pause(client, t, "T-8")
        rejected, ph2 = _pause(client, t, "T-14")
        edited, ph3 = _pause(client, t, "T-23")
        escalated = t.run(client, "T-3")["thread_id"]
        for path, body in ((f"/approvals/{approved}/approve", {"plan_hash": ph1, "reason": f"ok, told {EMAIL}"}),
                           (f"/approvals/{rejected}/reject", {"plan_hash": ph2, "reason": "customer already got one"}),
                           (f"/approvals/{edited}/edit", {"plan_hash": ph3, "reason": "partial only",
                                                          "edits": [{"index": 0, "args": {"amount_cents": 10000}}]})):
            r = client.post(path, json={**body, "wait": True}, headers=h)
            assert r.status_code == 200, r.text
        r = client.post(f"/escalations/{escalated}/resolve", headers=h,
                        json={"outcome": "refunded", "resolution": f"refunded by hand, emailed {EMAIL}"})
        assert r.status_code == 200, r.text

        examples = wait_for(lambda: (lambda xs: xs if len(xs) == 4 else None)(review_desk(rt).feedback.list(t.name)))
        by = {e.thread_id: e for e in examples}
        assert {by[x].kind for x in (approved, rejected, edited, escalated)} == {"approve", "reject", "edit", "escalation"}
        assert by[approved].kind == "approve" and by[rejected].kind == "reject" and by[edited].kind == "edit"
        assert all(EMAIL not in json.dumps(e.model_dump()) for e in examples)  # DLP-redacted
        assert all(e.actor == "approver-user" for e in examples)
        assert by[approved].expected | {"note": None} == {
            "ticket_id": "T-8", "route": "billing", "status": "awaiting_approval", "tool": "issue_refund",
            "decision": "approve", "amount_cents": 8999, "reason_codes": [], "citations": [], "note": None}
        assert by[edited].expected["amount_cents"] == 10000 and by[edited].expected["tool"] == "issue_refund"
        assert by[rejected].expected["tool"] is None and by[rejected].expected["status"] == "escalated"
        assert by[escalated].expected["status"] == "escalated" and by[escalated].ticket["id"] == "T-3"
        assert "customer already got one" in by[rejected].reason

        # the same decision recorded again is stored once
        assert not review_desk(rt).feedback.record(by[approved])

    fixtures = tmp_path / "fixtures.json"
    fixtures.write_text(json.dumps(demo_fixtures(t.name)))
    env = {"KEEL_DATA_DIR": str(data), "KEEL_DATABASE_URL": db_url or ""}
    if db_url is None:
        monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
        env.pop("KEEL_DATABASE_URL")
    out = tmp_path / "golden-feedback"
    code, stdout, err = _keel(["feedback", "export", "--out", str(out), "--fixtures", str(fixtures),
                               "--now", "2026-11-25T12:00:00Z"], monkeypatch, env, capsys)
    assert code == 0, err
    assert "wrote 4 labelled tickets" in stdout
    tickets = [json.loads(x) for x in (out / "tickets.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (out / "expected.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in tickets) == ["T-14", "T-23", "T-3", "T-8"]
    assert [e["ticket_id"] for e in expected] == [x["id"] for x in tickets]
    assert EMAIL not in (out / "tickets.jsonl").read_text() + (out / "expected.jsonl").read_text()

    # keel eval accepts the folder as it is
    report = tmp_path / "report.json"
    code, _, err = _keel(["eval", str(out), "--json", str(report)], monkeypatch, env, capsys)
    assert code == 0, err
    (ds,) = json.loads(report.read_text())["datasets"]
    assert ds["name"] == "feedback" and ds["tickets"] == 4
    # the labels count: the plan a reviewer rejected is now a miss, the approved one is not
    failed = {f["ticket_id"] for f in ds["failures"]}
    assert "T-14" in failed and "T-8" not in failed, ds["failures"]


def test_export_refuses_bad_input_with_one_line(tmp_path, monkeypatch, capsys):
    env = {"KEEL_DATA_DIR": str(tmp_path / "data")}
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    fixtures = tmp_path / "fx.json"
    fixtures.write_text(json.dumps(demo_fixtures("nobody")))
    code, _, err = _keel(["feedback", "export", "--out", str(tmp_path / "o"), "--fixtures", str(fixtures)],
                         monkeypatch, env, capsys)
    assert code == 2 and "no feedback for tenant 'nobody'" in err and "Traceback" not in err
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = _keel(["feedback", "export", "--out", str(f), "--fixtures", str(fixtures)], monkeypatch, env, capsys)
    assert code == 2 and "not a folder" in err
    code, _, err = _keel(["feedback", "export", "--out", str(tmp_path / "o"), "--fixtures", str(tmp_path / "none.json")],
                         monkeypatch, env, capsys)
    assert code == 2 and "no such file" in err
    assert not Path(tmp_path / "o").exists()


def test_a_decision_taken_with_keel_approve_is_recorded_too(tmp_path, monkeypatch, capsys):
    """``keel reject`` resumes the graph in-process (no queue, no worker): its decision is a
    labelled example all the same."""
    from support.api_helpers import demo_tickets

    from engine.runtime import Runtime
    from keel.config import Settings

    data = tmp_path / "data"
    rt = Runtime(Settings(data_dir=data, now="2026-11-25T12:00:00Z"))
    try:
        rt.ensure_fixtures()
        for user, role in (("req", "requester"), ("boss", "approver")):
            rt.principals.upsert("acme", user, role)
        state = rt.graph().invoke({"ticket": demo_tickets("acme")["T-8"]},
                                  {"configurable": {"thread_id": "t-cli", "requester": "req"}}, context=rt.context())
        assert state["status"] == "awaiting_approval"
    finally:
        rt.close()
    monkeypatch.delenv("KEEL_DATABASE_URL", raising=False)
    env = {"KEEL_DATA_DIR": str(data), "KEEL_NOW": "2026-11-25T12:00:00Z"}
    code, _, err = _keel(["reject", "t-cli", "--as", "boss", "--reason", f"ask {EMAIL} first"], monkeypatch, env, capsys)
    assert code == 0, err
    rt = Runtime(Settings(data_dir=data, now="2026-11-25T12:00:00Z"))
    try:
        (ex,) = review_desk(rt).feedback.list("acme")
        assert (ex.kind, ex.actor, ex.thread_id) == ("reject", "boss", "t-cli")
        assert EMAIL not in ex.reason and ex.expected["tool"] is None
    finally:
        rt.close()
