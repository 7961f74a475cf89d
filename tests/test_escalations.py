"""Escalation take-over (issue 11.4): the escalated runs of a tenant with reason codes and
evidence, taken over by one person (visible to the team), resolved and closed, every step
audited and tenant-isolated, on SQLite and on Postgres."""

from __future__ import annotations

import threading

import pytest
from support.api_fixtures import api_pg_url  # noqa: F401
from support.review_helpers import Tenant, make_runtime, served

from engine.escalations import EscalationError, Resolution
from engine.review import review_desk

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request):
    return request.getfixturevalue("api_pg_url") if request.param == "postgres" else None


def test_escalations_are_listed_taken_resolved_and_audited(db_url, tmp_path):
    with served(db_url, tmp_path) as (client, rt):
        t, other = Tenant(rt), Tenant(rt)
        out = t.run(client, "T-3")  # a refund above the agent's limit escalates
        tid = out["thread_id"]
        assert out["result"]["status"] == "escalated"
        codes = out["result"]["reason_codes"]
        assert codes  # amount_over_agent_limit with the local model

        page = client.get("/escalations", headers=t.h["approver"]).json()
        (item,) = [i for i in page["items"] if i["thread_id"] == tid]
        assert item["reason_codes"] == codes and item["state"] == "open"
        assert item["assignee"] is None and item["ticket_id"] == "T-3" and page["total"] >= 1

        detail = client.get(f"/escalations/{tid}", headers=t.h["approver"]).json()
        assert detail["ticket"]["id"] == "T-3" and detail["reason_codes"] == codes
        assert [a["tool"] for a in detail["actions"]] == [a["tool"] for a in out["result"].get("actions") or []]
        assert isinstance(detail["evidence"], list)

        # requesters may not; another tenant sees nothing and cannot act
        assert client.get("/escalations", headers=t.h["requester"]).status_code == 403
        assert all(i["thread_id"] != tid for i in client.get("/escalations", headers=other.h["approver"]).json()["items"])
        for method, path in (("get", f"/escalations/{tid}"), ("post", f"/escalations/{tid}/take")):
            r = getattr(client, method)(path, headers=other.h["approver"])
            assert r.status_code == 404 and r.json()["code"] == "not_found", r.text

        r = client.post(f"/escalations/{tid}/take", headers=t.h["approver"])
        assert r.status_code == 200 and r.json()["assignee"] == "approver-user" and r.json()["state"] == "taken"
        assert client.post(f"/escalations/{tid}/take", headers=t.h["approver"]).status_code == 200  # idempotent
        # the team sees who has it; a second person cannot take it or close it
        listed = client.get("/escalations", headers=t.h["approver2"]).json()["items"]
        assert [i["assignee"] for i in listed if i["thread_id"] == tid] == ["approver-user"]
        r = client.post(f"/escalations/{tid}/take", headers=t.h["approver2"])
        assert r.status_code == 409 and r.json()["code"] == "already_taken" and "approver-user" in r.json()["detail"]
        body = {"outcome": "refunded", "resolution": "Refunded 749.00 by hand after a call; mail me at x@y.com"}
        r = client.post(f"/escalations/{tid}/resolve", json=body, headers=t.h["approver2"])
        assert r.status_code == 409 and r.json()["code"] == "not_assignee"

        # bad bodies: a clear 422 naming the field, nothing stored
        for bad in ({"outcome": "refunded"}, {"outcome": "teleported", "resolution": "x"},
                    {"outcome": "refunded", "resolution": ""}, {**body, "extra": 1}):
            r = client.post(f"/escalations/{tid}/resolve", json=bad, headers=t.h["approver"])
            assert r.status_code == 422 and r.json()["reason"], (bad, r.text)

        r = client.post(f"/escalations/{tid}/resolve", json=body, headers=t.h["approver"])
        assert r.status_code == 200, r.text
        done = r.json()
        assert (done["state"], done["resolved_by"], done["outcome"]) == ("resolved", "approver-user", "refunded")
        assert done["resolution"] == body["resolution"]
        again = client.post(f"/escalations/{tid}/resolve", json=body, headers=t.h["approver"])
        assert again.status_code == 409 and again.json()["code"] == "resolved"
        assert all(i["thread_id"] != tid for i in client.get("/escalations", headers=t.h["approver"]).json()["items"])
        resolved = client.get("/escalations?state=resolved", headers=t.h["approver"]).json()["items"]
        assert [i["thread_id"] for i in resolved] == [tid]
        assert client.get("/escalations?state=bogus", headers=t.h["approver"]).status_code == 422

        # every step audited with its actor; the chain still verifies
        rows = [r for r in rt.audit.list(t.name, thread_id=tid) if r.kind == "escalation"]
        assert [(r.data["event"], r.actor) for r in rows] == [("taken", "approver-user"), ("resolved", "approver-user")]
        assert "x@y.com" not in rows[1].data["resolution"]  # redacted like every audit row
        assert rt.audit.verify(t.name).ok

        # the resolution is a labelled example (redacted)
        (ex,) = [e for e in review_desk(rt).feedback.list(t.name) if e.thread_id == tid]
        assert ex.kind == "escalation" and ex.actor == "approver-user" and "x@y.com" not in ex.reason
        assert ex.expected["status"] == "escalated" and ex.expected["reason_codes"] == sorted(codes)


def test_an_admin_resolves_an_escalation_nobody_took(db_url, tmp_path):
    with served(db_url, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid = t.run(client, "T-2")["thread_id"]  # gibberish: low_confidence
        body = {"outcome": "no_action", "resolution": "spam"}
        r = client.post(f"/escalations/{tid}/resolve", json=body, headers=t.h["admin"])
        assert r.status_code == 200 and r.json()["assignee"] == "admin-user" and r.json()["resolved_by"] == "admin-user"


def test_of_two_concurrent_takeovers_exactly_one_wins(db_url, tmp_path):
    with served(db_url, tmp_path) as (client, rt):
        t = Tenant(rt)
        tid = t.run(client, "T-3")["thread_id"]
    rt = make_runtime(db_url, tmp_path)
    try:
        store = review_desk(rt).escalations
        results: list[str] = []
        barrier = threading.Barrier(4)

        def take(who: str) -> None:
            barrier.wait()
            try:
                results.append(store.take(t.name, tid, actor=who).assignee or "")
            except EscalationError as e:
                results.append(e.code)

        threads = [threading.Thread(target=take, args=(f"u{i}",)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        winners = [r for r in results if r.startswith("u")]
        assert len(winners) == 1 and results.count("already_taken") == 3, results
        assert store.get(t.name, tid).assignee == winners[0]
        with pytest.raises(EscalationError) as e:
            store.resolve(t.name, tid, Resolution(outcome="other", resolution="x"), actor="nobody")
        assert e.value.code == "not_assignee"
    finally:
        rt.close()
