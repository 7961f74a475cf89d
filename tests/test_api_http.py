"""keel's API in-process on the real Postgres with the support graph: auth, limits, bad
input, approvals (separation of duties, stale hash, downward edits, idempotency), audit
chain, tickets, fixtures, replay/fork, and tenant isolation of every endpoint."""

from __future__ import annotations

import json
import re
import time
import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient

from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401
from support.api_helpers import demo_fixtures, demo_tickets, load_demo, new_tenant

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(api_runtime):
    from api.app import create_app

    app = create_app(api_runtime, embedded_worker=True, worker_concurrency=2, max_body_bytes=200_000,
                     worker_kwargs={"poll_s": 0.05})
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def w(api_runtime):
    """A fresh tenant with demo records, keys for each role, and another tenant's keys."""
    t, o = new_tenant(), new_tenant()
    load_demo(api_runtime, t)
    load_demo(api_runtime, o)
    pk = api_runtime.principals.create_key

    class W:
        tenant, other = t, o
        req = {"x-api-key": pk(t, "rita", "requester")}
        req2 = {"x-api-key": pk(t, "ravi", "requester")}
        appr = {"x-api-key": pk(t, "alex", "approver")}
        admin = {"x-api-key": pk(t, "ada", "admin")}
        o_req = {"x-api-key": pk(o, "oscar", "requester")}
        o_appr = {"x-api-key": pk(o, "olga", "approver")}
        o_admin = {"x-api-key": pk(o, "otto", "admin")}
        tickets = demo_tickets(t)

    return W


def _ticket(client, w, tid="T-8", h=None) -> dict:
    r = client.post("/tickets", json={"ticket": w.tickets[tid], "wait": True}, headers=h or w.req)
    assert r.status_code == 201, r.text
    return r.json()


# -- auth, limits, bad input ---------------------------------------------------------------
def test_auth_and_correlation_id(client, w):
    assert client.post("/assistants/search", json={}).status_code == 401
    assert client.post("/assistants/search", json={}, headers={"x-api-key": "nope"}).status_code == 401
    bearer = {"Authorization": "Bearer " + w.req["x-api-key"]}
    r = client.post("/assistants/search", json={}, headers={**bearer, "X-Request-ID": "req-123"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-123"
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/ok").headers["x-request-id"])
    assert client.get("/ok", headers={"X-Request-ID": "bad id; drop"}).headers["x-request-id"] != "bad id; drop"

    r = client.post("/tickets", json={"ticket": w.tickets["T-8"], "wait": True}, headers={**w.req, "X-Request-ID": "cid-77"})
    out = r.json()
    assert out["run"]["correlation_id"] == "cid-77"
    rows = client.get(f"/threads/{out['thread_id']}/audit", headers=w.appr).json()["items"]
    assert rows and all(row["correlation_id"] == "cid-77" for row in rows)


@pytest.mark.parametrize("method,path,body", [
    ("post", "/threads", {"bogus": 1}),
    ("post", "/threads", {"thread_id": "not-a-uuid"}),
    ("post", "/threads/search", {"limit": -1}),
    ("post", "/threads/search", {"status": "weird"}),
    ("post", "/assistants/search", {"limit": "many"}),
    ("post", "/tickets", {"ticket": {"id": "x"}}),
    ("post", "/tickets", {"ticket": {}, "extra": True}),
    ("post", "/fixtures", {"tenant": "x", "customers": [{"id": 5}]}),
])
def test_bad_input_is_422_with_reason(client, w, method, path, body):
    h = w.admin
    r = getattr(client, method)(path, json=body, headers=h)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_bad_input_never_5xx(client, w):
    tid = client.post("/threads", json={}, headers=w.req).json()["thread_id"]
    bodies = [b"{", b"[]", b"null", b'"x"', b'{"assistant_id": 5}', b'{"assistant_id": "support", "input": []}',
              b'{"assistant_id": "support", "input": {"ticket": 1}}', b'{"assistant_id": "nope", "input": {}}',
              b'{"assistant_id": "support", "command": {"resume": 1}}', b'{"assistant_id": "support", "command": {"x": 1}}',
              b'{"assistant_id": "support", "stream_mode": "messages"}', b'{"assistant_id": "support", "input": {}, "command": {"resume": {}}}',
              "\udcff".encode("utf-8", "surrogatepass")]
    for path in (f"/threads/{tid}/runs", f"/threads/{tid}/runs/wait", f"/threads/{tid}/runs/stream",
                 "/threads/search", "/approvals/" + tid + "/approve", "/tickets", "/fixtures", f"/threads/{tid}/replay"):
        for b in bodies:
            r = client.post(path, content=b, headers={**w.admin, "content-type": "application/json"})
            assert 400 <= r.status_code < 500, (path, b, r.status_code, r.text)
    for path in ("/threads/%00", "/threads/" + "x" * 5000, f"/threads/{tid}/runs/zzz", f"/threads/{tid}/state/zzz",
                 "/approvals?limit=-5", "/audit?limit=abc", f"/threads/{tid}/runs?status=bogus"):
        r = client.get(path, headers=w.admin)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)


@pytest.mark.parametrize("error", ["deadlock", "pool_timeout", "connection_lost"])
def test_database_unavailable_is_503_with_retry_after(client, w, monkeypatch, error):
    """A database that cannot serve the request right now (deadlock victim, pool exhausted,
    server gone) gives 503 + Retry-After and a reason, not an anonymous 500; the client's
    retry then succeeds."""
    import psycopg
    import psycopg_pool

    exc = {"deadlock": psycopg.errors.DeadlockDetected("deadlock detected"),
           "pool_timeout": psycopg_pool.PoolTimeout("couldn't get a connection after 30.00 sec"),
           "connection_lost": psycopg.OperationalError("server closed the connection unexpectedly")}[error]
    queue = client.app.state.keel.queue
    real = queue.search_threads
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return real(*a, **k)

    monkeypatch.setattr(queue, "search_threads", flaky)
    r = client.post("/threads/search", json={}, headers=w.req)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.json()["code"] == "unavailable" and "retry" in r.json()["detail"]
    assert "deadlock" not in r.text and "30.00" not in r.text and "server closed" not in r.text
    assert client.post("/threads/search", json={}, headers=w.req).status_code == 200


def test_request_size_limit(client, w):
    big = {"ticket": {**w.tickets["T-1"], "body": "x" * 19_000}, "metadata": {"pad": "y" * 250_000}}
    r = client.post("/tickets", json=big, headers=w.req)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_rate_limit_per_key_is_shared_by_every_server(api_runtime, w):
    """Two servers on one Postgres enforce one budget per key (not one each): 5 a minute
    means 5 in total, whichever server answers; other keys are not affected."""
    from api.app import create_app
    from api.ratelimit import SharedRateLimiter

    a = create_app(api_runtime, embedded_worker=False, rate_per_minute=5)
    b = create_app(api_runtime, embedded_worker=False, rate_per_minute=5)
    assert isinstance(a.state.keel.limiter, SharedRateLimiter)
    with TestClient(a) as ca, TestClient(b) as cb:
        codes = [(ca, cb)[i % 2].post("/assistants/search", json={}, headers=w.req).status_code for i in range(7)]
        assert codes[:5] == [200] * 5 and codes[5:] == [429, 429], codes
        assert cb.post("/assistants/search", json={}, headers=w.appr).status_code == 200  # per key
        r = ca.post("/assistants/search", json={}, headers=w.req)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 13  # one request every 12 s


def test_shared_rate_limit_refills_and_serializes_concurrent_requests(api_runtime):
    """The GCRA row refills at the sustained rate, and concurrent takes of one key from
    many threads never allow more than the burst."""
    import threading

    from api.ratelimit import SharedRateLimiter

    lim = SharedRateLimiter(api_runtime.db, per_minute=60, burst=10).setup()  # one a second
    key = uuid.uuid4().hex
    got: list[float] = []
    threads = [threading.Thread(target=lambda: got.extend(lim.take(key) for _ in range(3))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = [g for g in got if g == 0.0]
    assert 10 <= len(allowed) <= 11, got  # the burst (plus at most one refilled while they ran)
    assert all(0 < g <= 1.0 for g in got if g), got  # the next slot is at most a second away
    time.sleep(1.05)
    assert lim.take(key) == 0.0  # refilled


def test_openapi_document(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    for p in ("/threads", "/threads/{thread_id}/runs/wait", "/threads/{thread_id}/runs/stream", "/approvals/{thread_id}/approve",
              "/audit/verify", "/threads/{thread_id}/replay", "/tickets", "/fixtures", "/dead-letters"):
        assert p in paths, p


# -- approvals -------------------------------------------------------------------------------
def test_approval_rules_and_idempotency(client, w, api_runtime):
    out = _ticket(client, w, "T-8")
    tid = out["thread_id"]
    intr = out["result"]["__interrupt__"][0]["value"]
    plan_hash = intr["plan_hash"]

    listing = client.get("/approvals?limit=50", headers=w.appr).json()
    assert tid in [i["thread_id"] for i in listing["items"]]
    assert tid not in [i["thread_id"] for i in client.get("/approvals?limit=50", headers=w.o_appr).json()["items"]]
    detail = client.get(f"/approvals/{tid}", headers=w.appr).json()
    assert detail["plan_hash"] == plan_hash and detail["plan"] and detail["policy_checks"] and detail["evidence"]
    assert detail["preview"][0]["current"]["order"]["id"] == detail["plan"][0]["args"]["order_id"]
    assert client.get(f"/approvals/{tid}", headers=w.o_appr).status_code == 404

    def approve(h, body):
        return client.post(f"/approvals/{tid}/approve", json=body, headers=h)

    # the requester (and a second requester) cannot approve; another tenant sees nothing
    r = approve(w.req, {"plan_hash": plan_hash})
    assert r.status_code == 403 and r.json()["code"] in ("not_an_approver", "separation_of_duties")
    assert approve(w.req2, {"plan_hash": plan_hash}).status_code == 403
    assert approve(w.o_appr, {"plan_hash": plan_hash}).status_code == 404
    # a stale plan hash is refused
    r = approve(w.appr, {"plan_hash": "0" * 64})
    assert r.status_code == 409 and r.json()["code"] == "stale_plan"
    # an upward edit is refused
    amount = detail["plan"][0]["args"]["amount_cents"]
    r = client.post(f"/approvals/{tid}/edit", headers=w.appr,
                    json={"plan_hash": plan_hash, "edits": [{"index": 0, "args": {"amount_cents": amount + 1}}]})
    assert r.status_code == 422, r.text
    # the langgraph command path has the same rules: no side door
    cmd = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": plan_hash}}}
    assert client.post(f"/threads/{tid}/runs/wait", json=cmd, headers=w.req).status_code == 403
    cmd_named = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": plan_hash,
                                                                   "reviewer": "someone-else"}}}
    assert client.post(f"/threads/{tid}/runs/wait", json=cmd_named, headers=w.appr).status_code == 403
    assert client.post(f"/threads/{tid}/state", json={"values": {"status": "completed"}}, headers=w.admin).status_code == 403
    assert client.post(f"/threads/{tid}/runs", json={"assistant_id": "support", "input": {"ticket": w.tickets["T-8"]}},
                       headers=w.req).status_code == 409
    thread = client.get(f"/threads/{tid}", headers=w.req).json()
    assert thread["status"] == "interrupted" and api_runtime.backoffice.count_rows("refunds", w.tenant) == 0

    # a downward edit, then approval: executes the lower amount
    body = {"plan_hash": plan_hash, "reason": "partial", "edits": [{"index": 0, "args": {"amount_cents": amount - 1000}}]}
    r = client.post(f"/approvals/{tid}/edit", json=body, headers=w.appr)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["result"]["status"] == "completed" and not first["idempotent_replay"]
    refunds = api_runtime.backoffice.list_refunds(w.tenant, detail["plan"][0]["args"]["order_id"])
    assert [x["amount_cents"] for x in refunds] == [amount - 1000]
    # idempotent: the same decision again returns the same run, and does nothing more
    again = client.post(f"/approvals/{tid}/edit", json=body, headers=w.appr).json()
    assert again["idempotent_replay"] and again["run"]["run_id"] == first["run"]["run_id"]
    assert client.post(f"/approvals/{tid}/reject", json={"plan_hash": plan_hash, "reason": "no"},
                       headers=w.appr).status_code == 409
    assert len(api_runtime.backoffice.list_refunds(w.tenant, detail["plan"][0]["args"]["order_id"])) == 1

    kinds = {row["kind"] for row in client.get(f"/threads/{tid}/audit", headers=w.appr).json()["items"]}
    assert {"route_decision", "policy_decision", "approval", "tool_call"} <= kinds


def test_reject_and_langgraph_resume(client, w):
    out = _ticket(client, w, "T-6")
    tid = out["thread_id"]
    h = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
    body = {"plan_hash": h, "reason": "customer called back"}
    # the shipped pack's approver_roles is ["approver"]: an admin key does not decide plans
    r = client.post(f"/approvals/{tid}/reject", json=body, headers=w.admin)
    assert r.status_code == 403 and r.json()["code"] == "not_an_approver" and "approver" in r.json()["detail"]
    r = client.post(f"/approvals/{tid}/reject", json=body, headers=w.appr)
    assert r.status_code == 200 and r.json()["result"]["status"] == "rejected"

    out = _ticket(client, w, "T-14")
    tid = out["thread_id"]
    h = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
    cmd = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": h, "reviewer": "alex"}}}
    r = client.post(f"/threads/{tid}/runs/wait", json=cmd, headers=w.appr)
    assert r.status_code == 200 and r.json()["status"] == "completed"
    # repeating the identical resume is idempotent (same run), not a second execution
    r2 = client.post(f"/threads/{tid}/runs", json=cmd, headers=w.appr)
    assert r2.status_code == 200
    assert len(client.get(f"/threads/{tid}/runs", headers=w.req).json()) == 2


# -- audit -------------------------------------------------------------------------------------
def test_audit_chain_detects_a_changed_row(client, w, api_pg_url):
    _ticket(client, w, "T-1")
    ok = client.get("/audit/verify", headers=w.admin).json()
    assert ok["ok"] and ok["rows"] > 3
    assert client.get("/audit", headers=w.req).status_code == 403
    rows = client.get("/audit?limit=1000", headers=w.admin).json()["items"]
    assert rows and all(r["tenant"] == w.tenant for r in rows)
    with psycopg.connect(api_pg_url) as c:
        c.execute("UPDATE audit_log SET actor = 'mallory' WHERE tenant = %s AND seq = 2", (w.tenant,))
    bad = client.get("/audit/verify", headers=w.admin).json()
    assert bad["ok"] is False and bad["first_bad_seq"] == 2
    assert client.get("/audit/verify", headers=w.o_admin).json()["ok"] is True


# -- tickets, fixtures, replay and fork ------------------------------------------------------------
def test_tickets_and_fixtures(client, w, api_runtime):
    r = client.post("/tickets", json={"ticket": {**w.tickets["T-1"], "tenant": w.other}}, headers=w.req)
    assert r.status_code == 403
    assert client.post("/tickets", json={"ticket": w.tickets["T-1"]}, headers=w.appr).status_code == 403
    r = client.post("/tickets", json={"ticket": w.tickets["T-1"]}, headers=w.req)
    assert r.status_code == 201 and r.json()["run"]["status"] in ("pending", "running", "success")
    th = client.get(f"/threads/{r.json()['thread_id']}", headers=w.req).json()
    assert th["metadata"]["ticket_id"] == "T-1"

    fx = demo_fixtures(w.tenant)
    fx["customers"][0]["name"] = "Renamed Customer"
    assert client.post("/fixtures", json=fx, headers=w.req).status_code == 403
    assert client.post("/fixtures", json=fx, headers=w.appr).status_code == 403
    assert client.post("/fixtures", json=demo_fixtures(w.other), headers=w.admin).status_code == 403
    r = client.post("/fixtures", json=fx, headers=w.admin)
    assert r.status_code == 200 and r.json()["loaded"]["customers"] == len(fx["customers"])
    assert api_runtime.backoffice.get_customer(w.tenant, fx["customers"][0]["id"])["name"] == "Renamed Customer"


def test_replay_and_fork_from_checkpoint(client, w):
    out = _ticket(client, w, "T-8")
    tid = out["thread_id"]
    history = client.post(f"/threads/{tid}/history", json={"limit": 50}, headers=w.req).json()
    before = next(s for s in history if s["next"] == ["policy_check"])
    cp = before["checkpoint"]["checkpoint_id"]
    at = client.get(f"/threads/{tid}/state/{cp}", headers=w.req).json()
    assert at["next"] == ["policy_check"]

    # replay is refused while the plan waits for a decision
    assert client.post(f"/threads/{tid}/replay", json={"checkpoint_id": cp}, headers=w.req).status_code == 409
    # fork: a new thread continues from the checkpoint and pauses for approval again
    r = client.post(f"/threads/{tid}/replay", json={"checkpoint_id": cp, "fork": True, "wait": True}, headers=w.req)
    assert r.status_code == 200, r.text
    fork = r.json()
    assert fork["forked"] and fork["thread_id"] != tid
    assert fork["result"]["__interrupt__"][0]["value"]["plan_hash"]
    assert client.get(f"/threads/{fork['thread_id']}", headers=w.req).json()["metadata"]["forked_from"]["thread_id"] == tid
    # the approver decides the original; then the original can be replayed from the checkpoint
    h = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
    assert client.post(f"/approvals/{tid}/reject", json={"plan_hash": h, "reason": "no"}, headers=w.appr).status_code == 200
    r = client.post(f"/threads/{tid}/replay", json={"checkpoint_id": cp, "wait": True}, headers=w.req)
    assert r.status_code == 200 and r.json()["result"]["__interrupt__"]
    assert client.post(f"/threads/{tid}/replay", json={"checkpoint_id": "nope"}, headers=w.req).status_code == 404
    assert client.post(f"/threads/{tid}/replay", json={"checkpoint_id": cp}, headers=w.o_admin).status_code == 404


# -- tenant isolation of every endpoint ---------------------------------------------------------------
def test_every_endpoint_is_tenant_isolated(client, w):
    out = _ticket(client, w, "T-8")
    tid, rid = out["thread_id"], out["run"]["run_id"]
    plan_hash = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
    cp = client.get(f"/threads/{tid}/state", headers=w.req).json()["checkpoint"]["checkpoint_id"]
    bodies = {
        ("PATCH", "/threads/{thread_id}"): {"metadata": {"x": 1}},
        ("POST", "/threads/{thread_id}/state/checkpoint"): {"checkpoint": {"checkpoint_id": cp}},
        ("POST", "/threads/{thread_id}/state"): {"values": {}},
        ("POST", "/threads/{thread_id}/history"): {"limit": 5},
        ("POST", "/threads/{thread_id}/replay"): {"checkpoint_id": cp},
        ("POST", "/threads/{thread_id}/runs"): {"assistant_id": "support", "input": {"ticket": w.tickets["T-1"]}},
        ("POST", "/threads/{thread_id}/runs/wait"): {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": plan_hash}}},
        ("POST", "/threads/{thread_id}/runs/stream"): {"assistant_id": "support", "input": {"ticket": w.tickets["T-1"]}},
        ("POST", "/threads/{thread_id}/runs/crons"): {"assistant_id": "support", "schedule": "0 * * * *",
                                                      "input": {"ticket": w.tickets["T-1"]}},
        ("POST", "/approvals/{thread_id}/approve"): {"plan_hash": plan_hash},
        ("POST", "/approvals/{thread_id}/reject"): {"plan_hash": plan_hash, "reason": "x"},
        ("POST", "/approvals/{thread_id}/edit"): {"plan_hash": plan_hash, "edits": [{"index": 0, "args": {"amount_cents": 1}}]},
        ("POST", "/escalations/{thread_id}/resolve"): {"outcome": "resolved", "resolution": "refunded by hand"},
    }
    params = {"thread_id": tid, "run_id": rid, "checkpoint_id": cp}
    checked = 0
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        if not names & {"thread_id", "run_id"}:
            continue
        for method in (m.upper() for m in ops):
            url = path.format(**{k: params[k] for k in names})
            for key in (w.o_admin, w.o_appr, w.o_req):
                r = client.request(method, url, headers=key, json=bodies.get((method, path)))
                assert r.status_code in (403, 404), (method, path, r.status_code, r.text)
                assert tid not in r.text or r.status_code == 404 and "not found" in r.text
            checked += 1
    assert checked >= 20
    # listing endpoints only ever show the caller's tenant
    assert tid not in json.dumps(client.post("/threads/search", json={"limit": 1000}, headers=w.o_admin).json())
    assert client.post("/threads/count", json={}, headers=w.o_admin).json() == 0
    assert tid not in json.dumps(client.get("/approvals", headers=w.o_admin).json())
    assert tid not in json.dumps(client.get("/audit?limit=10000", headers=w.o_admin).json())
    assert tid not in json.dumps(client.get("/dead-letters", headers=w.o_admin).json())
    assert client.post("/threads", json={"thread_id": tid}, headers=w.o_req).status_code == 409
    assert client.post(f"/threads/{uuid.uuid4()}/runs", headers=w.o_req,
                       json={"assistant_id": "support", "input": {}, "if_not_exists": "create"}).status_code in (403, 422)
    # the thread is untouched and still waits for its approval
    assert client.get(f"/threads/{tid}", headers=w.req).json()["status"] == "interrupted"


def test_admin_starts_runs_but_does_not_approve_them(client, w):
    """Under the shipped pack an admin may start a run but not approve one (its own or
    another's); an approver decides it. (Packs that let admins approve:
    tests/test_approval_rules.py.)"""
    out = _ticket(client, w, "T-8", h=w.admin)
    tid = out["thread_id"]
    h = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
    r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": h}, headers=w.admin)
    assert r.status_code == 403 and r.json()["code"] == "not_an_approver"
    assert client.post(f"/approvals/{tid}/approve", json={"plan_hash": h}, headers=w.o_admin).status_code == 404
    r = client.post(f"/approvals/{tid}/approve", json={"plan_hash": h, "wait": False}, headers=w.appr)
    assert r.status_code == 200 and r.json()["run"]["status"] in ("pending", "running", "success")
    joined = client.get(f"/threads/{tid}/runs/{r.json()['run']['run_id']}/join", headers=w.admin).json()
    assert joined["status"] == "completed"
