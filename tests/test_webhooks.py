"""Signed webhooks (issue 11.6): per-tenant subscriptions (admin; secret shown once), an
outbox row per event written right after the run's state change, delivered by the workers'
sweep with an HMAC-SHA256 signature, retried with backoff, every attempt recorded, dead-
lettered when it keeps failing, and delivered once per event however many workers sweep.
Receivers are local HTTP servers on free loopback ports."""

from __future__ import annotations

import json
import threading

import pytest
from support.api_fixtures import api_pg_url  # noqa: F401
from support.review_helpers import Receiver, Tenant, make_runtime, served, wait_for

from engine.review import review_desk
from engine.webhooks import SIGNATURE_HEADER, DeliveryPolicy, SubscriptionIn, deliver_due, sign, verify

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
FAST = {"review_sweep_s": 0.05, "webhook_backoff_base_s": 0.05, "webhook_backoff_cap_s": 0.2}


@pytest.fixture(params=BACKENDS)
def db_url(request):
    return request.getfixturevalue("api_pg_url") if request.param == "postgres" else None


def _subscribe(client, t: Tenant, url: str, events: list[str]) -> dict:
    r = client.post("/webhooks", json={"url": url, "events": events}, headers=t.h["admin"])
    assert r.status_code == 201, r.text
    return r.json()


def test_signature_verifies_and_a_tampered_body_does_not():
    body = b'{"a":1}'
    header = sign("whsec_x", body, t=1_000)
    assert verify("whsec_x", body, header, now=1_010)
    assert not verify("whsec_x", b'{"a":2}', header, now=1_010)
    assert not verify("whsec_y", body, header, now=1_010)
    assert not verify("whsec_x", body, header, now=1_000 + 301)  # a replay long after
    assert not verify("whsec_x", body, "garbage", now=1_010)


def test_events_are_delivered_signed_with_the_secret_shown_once(db_url, tmp_path):
    with Receiver() as rx, served(db_url, tmp_path, **FAST) as (client, rt):
        t, other = Tenant(rt), Tenant(rt)
        sub = _subscribe(client, t, rx.url, ["run.awaiting_approval", "run.escalated", "run.completed"])
        assert sub["secret"].startswith("whsec_") and sub["events"] == ["run.awaiting_approval", "run.escalated",
                                                                         "run.completed"]
        listed = client.get("/webhooks", headers=t.h["admin"]).json()["items"]
        assert [s["id"] for s in listed] == [sub["id"]] and "secret" not in listed[0]
        assert client.get("/webhooks", headers=other.h["admin"]).json()["items"] == []
        assert client.get("/webhooks", headers=t.h["approver"]).status_code == 403

        paused = t.run(client, "T-8")  # waits for approval
        escalated = t.run(client, "T-3")
        wait_for(lambda: len(rx.requests) >= 2)
        by_type = {}
        for req in rx.requests:
            assert verify(sub["secret"], req["body"], req["headers"][SIGNATURE_HEADER.lower()])
            evt = json.loads(req["body"])
            assert req["headers"]["x-keel-event"] == evt["type"] and req["headers"]["x-keel-event-id"] == evt["id"]
            by_type[evt["type"]] = evt
        assert by_type["run.awaiting_approval"]["data"]["thread_id"] == paused["thread_id"]
        assert by_type["run.awaiting_approval"]["data"]["assignee_group"] == "support-approvers"
        assert by_type["run.escalated"]["data"]["thread_id"] == escalated["thread_id"]
        assert by_type["run.escalated"]["tenant"] == t.name

        # approving completes the run: run.completed
        plan_hash = paused["result"]["__interrupt__"][0]["value"]["plan_hash"]
        r = client.post(f"/approvals/{paused['thread_id']}/approve", json={"plan_hash": plan_hash, "wait": True},
                        headers=t.h["approver"])
        assert r.status_code == 200, r.text
        done = wait_for(lambda: [json.loads(q["body"]) for q in rx.requests
                                 if json.loads(q["body"])["type"] == "run.completed"])
        assert done[0]["data"]["status"] == "completed" and done[0]["data"]["thread_id"] == paused["thread_id"]
        # every delivery recorded with its attempt
        deliveries = client.get("/webhooks/deliveries", headers=t.h["admin"]).json()["items"]
        assert {d["status"] for d in deliveries} == {"delivered"} and all(len(d["history"]) == 1 for d in deliveries)

        # deleting stops further events; another tenant cannot delete it
        assert client.delete(f"/webhooks/{sub['id']}", headers=other.h["admin"]).status_code == 404
        assert client.delete(f"/webhooks/{sub['id']}", headers=t.h["admin"]).status_code == 200
        assert client.delete(f"/webhooks/{sub['id']}", headers=t.h["admin"]).status_code == 404
        assert client.get("/webhooks", headers=t.h["admin"]).json()["items"] == []
        audit = [r.data["event"] for r in rt.audit.list(t.name) if r.kind == "webhook"]
        assert audit == ["subscribed", "unsubscribed"]


@pytest.mark.parametrize("body", [
    {"url": "ftp://x/y", "events": ["run.completed"]},
    {"url": "not a url", "events": ["run.completed"]},
    {"url": "http://127.0.0.1/h", "events": []},
    {"url": "http://127.0.0.1/h", "events": ["run.exploded"]},
    {"url": "http://127.0.0.1/h", "events": ["run.completed", "run.completed"]},
    {"url": "http://127.0.0.1/h"},
    {"url": "http://127.0.0.1/h", "events": ["run.completed"], "secret": "mine"},
])
def test_bad_subscriptions_are_refused_with_a_reason(tmp_path, body):
    with served(None, tmp_path, worker=False) as (client, rt):
        t = Tenant(rt)
        r = client.post("/webhooks", json=body, headers=t.h["admin"])
        assert r.status_code == 422 and r.json()["reason"], r.text
        assert client.get("/webhooks", headers=t.h["admin"]).json()["items"] == []


def test_failed_deliveries_are_retried_with_backoff_then_succeed(db_url, tmp_path):
    with Receiver(script=[500, 503]) as rx, served(db_url, tmp_path, **FAST) as (client, rt):
        t = Tenant(rt)
        sub = _subscribe(client, t, rx.url, ["run.escalated"])
        t.run(client, "T-3")
        wait_for(lambda: len(rx.requests) == 3, timeout=30)
        (d,) = wait_for(lambda: client.get("/webhooks/deliveries?status=delivered", headers=t.h["admin"]).json()["items"])
        assert d["attempts"] == 3 and [h["status_code"] for h in d["history"]] == [500, 503, 200]
        assert d["last_error"] is None and d["subscription_id"] == sub["id"]
        assert len({json.loads(q["body"])["id"] for q in rx.requests}) == 1  # the same event each time
        assert client.get("/webhooks/dead-letters", headers=t.h["admin"]).json()["items"] == []


def test_a_delivery_that_keeps_failing_goes_to_the_dead_letters(db_url, tmp_path):
    with Receiver(script=[500] * 10) as rx, served(db_url, tmp_path, webhook_max_attempts=3, **FAST) as (client, rt):
        t = Tenant(rt)
        _subscribe(client, t, rx.url, ["run.escalated"])
        out = t.run(client, "T-3")
        (d,) = wait_for(lambda: client.get("/webhooks/dead-letters", headers=t.h["admin"]).json()["items"], timeout=30)
        assert d["status"] == "dead" and d["attempts"] == 3 and d["last_error"] == "HTTP 500"
        assert [h["status_code"] for h in d["history"]] == [500, 500, 500]
        assert d["body"]["data"]["thread_id"] == out["thread_id"]
        assert len(rx.requests) == 3
        assert client.get("/webhooks/dead-letters", headers=t.h["approver"]).status_code == 403


def test_each_event_is_delivered_once_with_two_workers(db_url, tmp_path):
    rts = [make_runtime(db_url, tmp_path) for _ in range(2)]
    try:
        desk = review_desk(rts[0])
        with Receiver() as rx:
            sub, _ = desk.webhooks.subscribe("acme-x", SubscriptionIn(url=rx.url, events=["run.completed"]), actor="a")
            for i in range(30):
                assert desk.webhooks.emit("acme-x", "run.completed", f"evt-{i}", {"i": i}) == 1
            assert desk.webhooks.emit("acme-x", "run.completed", "evt-0", {"i": 0}) == 0  # a repeat is stored once
            policy = DeliveryPolicy(backoff_base_s=0.05, backoff_cap_s=0.1)
            start = threading.Barrier(4)

            def work(rt, wid: str) -> None:
                start.wait()
                while deliver_due(review_desk(rt).webhooks, wid, policy, limit=3):
                    pass

            threads = [threading.Thread(target=work, args=(rts[i % 2], f"w{i}")) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            ids = [json.loads(q["body"])["id"] for q in rx.requests]
            assert sorted(ids) == sorted(f"evt-{i}" for i in range(30)), ids
            assert {d.status for d in desk.webhooks.deliveries("acme-x", limit=100)} == {"delivered"}
    finally:
        for rt in rts:
            rt.close()


def test_a_dead_lettered_run_is_announced(tmp_path):
    """The worker's dead-letter path (``Worker._audit_dead_letter``) queues ``run.dead_lettered``."""
    from engine.queue import RunQueue
    from engine.worker import Worker

    rt = make_runtime(None, tmp_path)
    try:
        desk = review_desk(rt)
        with Receiver() as rx:
            sub, secret = desk.webhooks.subscribe("acme", SubscriptionIn(url=rx.url, events=["run.dead_lettered"]),
                                                  actor="a")
            run = {"run_id": "r-1", "thread_id": "th-1", "tenant": "acme", "graph_id": "support",
                   "dead_reason": "lease_expired_repeatedly", "attempts": 4, "correlation_id": "c"}
            Worker(rt, RunQueue(rt.db).setup())._audit_dead_letter(run)
            Worker(rt, RunQueue(rt.db))._audit_dead_letter(run)  # announced once however often it is seen
            assert deliver_due(desk.webhooks, "w", DeliveryPolicy()) == 1
            (req,) = rx.requests
            evt = json.loads(req["body"])
            assert evt["type"] == "run.dead_lettered" and evt["data"]["reason"] == "lease_expired_repeatedly"
            assert verify(secret, req["body"], req["headers"]["x-keel-signature"])
    finally:
        rt.close()
