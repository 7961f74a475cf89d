"""The review console without a browser (FastAPI's TestClient): sign-in and its cookie,
CSRF on every POST, tenant isolation, separation of duties, reasons on rejects, downward
edits, escalation take-over, and the pure view helpers. Every refusal is checked to leave
the thread waiting (nothing decided through the console's refusal paths)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.console_env import ConsoleEnv, console_env

from console.views import QueueFilter, before_after, queue_rows, risk_of, until_text


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[tuple[ConsoleEnv, Any]]:
    from fastapi.testclient import TestClient

    with console_env(tmp_path_factory.mktemp("console")) as e, TestClient(e.app) as client:
        yield e, client


def sign_in(env: ConsoleEnv, key: str) -> Any:
    """A fresh client (own cookie jar) signed in with ``key``."""
    from fastapi.testclient import TestClient

    c = TestClient(env.app)
    page = c.get("/console/login")
    token = re.search(r'name="signin_token" value="([^"]+)"', page.text).group(1)
    r = c.post("/console/login", data={"api_key": key, "signin_token": token, "next": "/console/approvals"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/approvals", r.text
    return c


def csrf_of(c: Any, path: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', c.get(path).text).group(1)


def pause(env: ConsoleEnv, client: Any, tenant: str, ticket: str = "T-8", as_: str = "requester") -> tuple[str, str]:
    """Start ``ticket`` through the API and wait until it asks for approval."""
    t = env.tickets(tenant)[ticket]
    r = client.post("/tickets", json={"ticket": t, "wait": True}, headers={"x-api-key": env.keys[tenant][as_]})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["result"]["status"] == "awaiting_approval", out["result"].get("reason_codes")
    return out["thread_id"], out["result"]["__interrupt__"][0]["value"]["plan_hash"]


def until(c: Any, path: str, needle: str, timeout: float = 30.0) -> str:
    """The page at ``path`` once it contains ``needle`` (the run behind it finishes)."""
    deadline = time.monotonic() + timeout
    while True:
        page = c.get(path).text
        if needle in page or time.monotonic() > deadline:
            return page
        time.sleep(0.05)


def waiting(client: Any, env: ConsoleEnv, tid: str, tenant: str) -> bool:
    r = client.get(f"/threads/{tid}", headers={"x-api-key": env.keys[tenant]["requester"]})
    return r.json()["status"] == "interrupted"


# -- sign-in ------------------------------------------------------------------------------
def test_pages_need_a_session_and_a_bad_key_is_refused(env):
    e, client = env
    t = e.add_tenant()
    from fastapi.testclient import TestClient

    anon = TestClient(e.app)
    for path in ("/console/approvals", "/console/escalations", "/console/threads/x", "/console/approvals/rows"):
        r = anon.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), path
    page = anon.get("/console/login")
    token = re.search(r'name="signin_token" value="([^"]+)"', page.text).group(1)
    r = anon.post("/console/login", data={"api_key": "keel_nope", "signin_token": token})
    assert r.status_code == 401 and "not valid" in r.text
    assert "keel_console=" not in "; ".join(r.headers.get_list("set-cookie"))
    # the sign-in form's own token: a cross-site POST without it is refused
    r = TestClient(e.app).post("/console/login", data={"api_key": e.keys[t]["approver"]}, follow_redirects=False)
    assert r.status_code == 303 and "error=stale" in r.headers["location"]


def test_session_cookie_is_httponly_strict_signed_and_follows_revocation(env):
    e, client = env
    t = e.add_tenant()
    from fastapi.testclient import TestClient

    key = e.rt.principals.create_key(t, "temp-approver", "approver")
    c = TestClient(e.app)
    token = re.search(r'name="signin_token" value="([^"]+)"', c.get("/console/login").text).group(1)
    r = c.post("/console/login", data={"api_key": key, "signin_token": token}, follow_redirects=False)
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("keel_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert c.get("/console/approvals").status_code == 200
    # a tampered cookie is no session
    value = c.cookies.get("keel_console")
    forged = TestClient(e.app)
    forged.cookies.set("keel_console", value[:-2] + ("AA" if not value.endswith("AA") else "BB"), path="/console")
    assert forged.get("/console/approvals", follow_redirects=False).status_code == 303
    # a revoked key ends the session at once (the API's auth cache is bypassed by a fresh key here)
    e.rt.principals.revoke(key)
    e.app.state.keel._auth_cache.clear()
    assert c.get("/console/approvals", follow_redirects=False).headers["location"].startswith("/console/login")


def test_next_cannot_redirect_off_the_console(env):
    e, _ = env
    t = e.add_tenant()
    from fastapi.testclient import TestClient

    c = TestClient(e.app)
    for bad in ("//evil.example/x", "https://evil.example/", "/api", "/console\\..\\x"):
        token = re.search(r'name="signin_token" value="([^"]+)"', c.get("/console/login").text).group(1)
        r = c.post("/console/login", data={"api_key": e.keys[t]["approver"], "signin_token": token, "next": bad},
                   follow_redirects=False)
        assert r.headers["location"] == "/console/approvals", bad


# -- CSRF ---------------------------------------------------------------------------------
def test_every_post_needs_the_sessions_csrf_token(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t)
    c = sign_in(e, e.keys[t]["approver"])
    other = sign_in(e, e.keys[t]["admin"])
    foreign_token = csrf_of(other, "/console/approvals")
    for token in (None, "", "0" * 64, foreign_token):
        data = {"plan_hash": plan_hash}
        if token is not None:
            data["csrf"] = token
        r = c.post(f"/console/approvals/{tid}/approve", data=data, follow_redirects=False)
        assert r.status_code == 403 and "security token" in r.text, token
        assert waiting(client, e, tid, t)
    for path in (f"/console/escalations/{tid}/take", f"/console/threads/{tid}/replay", "/console/logout"):
        assert c.post(path, data={"csrf": "x"}).status_code == 403, path
    # the header form of the token (htmx sends it) works as well as the field
    r = c.post(f"/console/approvals/{tid}/approve", data={"plan_hash": plan_hash},
               headers={"X-CSRF-Token": csrf_of(c, "/console/approvals")}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/console/threads/{tid}"), r.text


# -- tenants, roles, decisions ------------------------------------------------------------
def test_another_tenants_approver_sees_nothing_and_cannot_decide(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t)
    own = sign_in(e, e.keys[t]["approver"])
    assert tid in own.get("/console/approvals/rows").text
    stranger = sign_in(e, e.keys[e.tenants[1]]["approver"])
    assert tid not in stranger.get("/console/approvals").text
    assert tid not in stranger.get("/console/approvals/rows").text
    assert tid not in stranger.get("/console/escalations").text
    for path in (f"/console/approvals/{tid}", f"/console/threads/{tid}"):
        r = stranger.get(path)
        assert r.status_code == 404 and "plan_hash" not in r.text and "T-8" not in r.text, path
    r = stranger.post(f"/console/approvals/{tid}/approve", data={"plan_hash": plan_hash,
                                                                "csrf": csrf_of(stranger, "/console/approvals")})
    assert r.status_code == 404
    assert waiting(client, e, tid, t)


def test_requester_sees_why_they_cannot_decide_their_own_run(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t, as_="dual-requester")
    c = sign_in(e, e.keys[t]["dual-approver"])
    page = c.get(f"/console/approvals/{tid}")
    assert page.status_code == 200 and 'id="cannot-decide"' in page.text
    assert "requester of a run cannot approve" in page.text
    r = c.post(f"/console/approvals/{tid}/approve", data={"plan_hash": plan_hash, "csrf": csrf_of(c, "/console/approvals")})
    assert r.status_code == 403 and 'id="decision-error"' in r.text and "requester of a run cannot approve" in r.text
    assert waiting(client, e, tid, t)


def test_reject_needs_a_reason_and_then_goes_through_the_engine(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t)
    c = sign_in(e, e.keys[t]["approver"])
    token = csrf_of(c, "/console/approvals")
    for reason in ("", "   "):
        r = c.post(f"/console/approvals/{tid}/reject", data={"plan_hash": plan_hash, "reason": reason, "csrf": token})
        assert r.status_code == 422 and "needs a reason" in r.text
        assert waiting(client, e, tid, t)
    r = c.post(f"/console/approvals/{tid}/reject", data={"plan_hash": plan_hash, "reason": "wrong order", "csrf": token},
               follow_redirects=False)
    assert r.status_code == 303
    assert "status-rejected" in until(c, r.headers["location"], "status-rejected")
    rows = client.get(f"/threads/{tid}/audit", headers={"x-api-key": e.keys[t]["approver"]}).json()["items"]
    assert any(r["kind"] == "approval" and r["actor"] == f"approver-{t}" for r in rows), rows


def test_edit_then_approve_only_downward_and_shows_the_new_plan(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t)
    c = sign_in(e, e.keys[t]["approver"])
    detail = c.get(f"/console/approvals/{tid}").text
    assert 'name="amount_0"' in detail and "89.99" in detail
    token = csrf_of(c, "/console/approvals")
    r = c.post(f"/console/approvals/{tid}/edit", data={"plan_hash": plan_hash, "csrf": token, "amount_0": "120.00",
                                                       "was_0": "8999"})
    assert r.status_code == 422 and "edits may only" in r.text
    assert waiting(client, e, tid, t)
    r = c.post(f"/console/approvals/{tid}/edit", data={"plan_hash": plan_hash, "csrf": token, "amount_0": "40.00",
                                                       "was_0": "8999"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = until(c, r.headers["location"], "status-completed")
    new_hash = re.search(r'id="current-plan-hash">([0-9a-f]{64})<', page).group(1)
    assert new_hash != plan_hash
    assert e.rt.backoffice.get_order(t, "O-5002")["refunded_cents"] >= 4000


def test_detail_shows_ticket_evidence_checks_preview_and_versions(env):
    e, client = env
    t = e.add_tenant()
    tid, plan_hash = pause(e, client, t)
    c = sign_in(e, e.keys[t]["approver"])
    page = c.get(f"/console/approvals/{tid}").text
    for needle in ("Ticket", "issue_refund", "refund.window", "refunded_cents", "Evidence", "get_customer",
                   "support-v1", e.rt.policy.sha256, "support", plan_hash):
        assert needle in page, needle


# -- escalations --------------------------------------------------------------------------
def test_escalation_take_over_and_resolution_are_tenant_scoped_and_audited(env):
    e, client = env
    t = e.add_tenant()
    r = client.post("/tickets", json={"ticket": e.tickets(t)["T-2"], "wait": True},
                    headers={"x-api-key": e.keys[t]["requester"]})
    assert r.json()["result"]["status"] == "escalated"
    tid = r.json()["thread_id"]
    stranger = sign_in(e, e.keys[e.tenants[1]]["approver"])
    assert tid not in stranger.get("/console/escalations").text
    r = stranger.post(f"/console/escalations/{tid}/take", data={"csrf": csrf_of(stranger, "/console/escalations")})
    assert r.status_code == 404
    c = sign_in(e, e.keys[t]["approver"])
    page = c.get("/console/escalations").text
    assert f'id="esc-{tid}"' in page and "low_confidence" in page
    token = csrf_of(c, "/console/escalations")
    assert c.post(f"/console/escalations/{tid}/take", data={"csrf": token}, follow_redirects=False).status_code == 303
    requester = sign_in(e, e.keys[t]["requester"])
    r = requester.get("/console/escalations")
    assert r.status_code == 403 and "requires role approver or admin" in r.text  # the API's rule
    other = sign_in(e, e.keys[t]["admin"])
    assert f"approver-{t}" in other.get("/console/escalations").text  # the assignment is visible to the team
    r = other.post(f"/console/escalations/{tid}/take", data={"csrf": csrf_of(other, "/console/escalations")})
    assert r.status_code == 409 and f"already taken by approver-{t}" in r.text
    r = c.post(f"/console/escalations/{tid}/resolve", data={"csrf": token, "outcome": "refunded", "resolution": ""})
    assert r.status_code == 422
    r = c.post(f"/console/escalations/{tid}/resolve", data={"csrf": token, "outcome": "refunded",
                                                            "resolution": "refunded by hand"}, follow_redirects=False)
    assert r.status_code == 303
    assert f'id="esc-{tid}"' not in c.get("/console/escalations").text
    rows = client.get(f"/threads/{tid}/audit", headers={"x-api-key": e.keys[t]["approver"]}).json()["items"]
    events = [(r["kind"], r["data"].get("event"), r["actor"]) for r in rows if r["kind"] == "escalation"]
    assert events == [("escalation", "taken", f"approver-{t}"), ("escalation", "resolved", f"approver-{t}")]



def test_a_resolution_in_the_console_is_a_feedback_example_at_once(tmp_path):
    """Resolving an escalation in the console goes through the review desk's store, so its
    feedback example is recorded with the resolution, not later by the worker's backfill
    (the sweep runs once at start-up here, then not for an hour)."""
    from fastapi.testclient import TestClient

    from engine.review import review_desk

    with console_env(tmp_path, settings={"review_sweep_s": 3600.0}) as e, TestClient(e.app) as client:
        t = e.add_tenant()
        r = client.post("/tickets", json={"ticket": e.tickets(t)["T-2"], "wait": True},
                        headers={"x-api-key": e.keys[t]["requester"]})
        assert r.json()["result"]["status"] == "escalated"
        tid = r.json()["thread_id"]
        c = sign_in(e, e.keys[t]["approver"])
        token = csrf_of(c, "/console/escalations")
        assert not [x for x in review_desk(e.rt).feedback.list(t) if x.thread_id == tid]
        r = c.post(f"/console/escalations/{tid}/resolve", data={"csrf": token, "outcome": "refunded",
                                                                "resolution": "refunded by hand"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        (ex,) = [x for x in review_desk(e.rt).feedback.list(t) if x.thread_id == tid]
        assert (ex.kind, ex.actor) == ("escalation", f"approver-{t}") and "refunded by hand" in ex.reason


# -- pure helpers -------------------------------------------------------------------------
def test_queue_filter_ignores_junk_and_sorts():
    f = QueueFilter.parse({"sort": "drop table", "risk": "extreme", "order": "desc", "q": "x" * 500})
    assert f.sort == "age" and f.risk == "" and f.desc and len(f.q) == 128
    items = [{"thread_id": "a", "route": "billing", "plan": [{"tool": "issue_refund", "args": {"amount_cents": 500}}],
              "waiting_since": "2026-01-01T00:00:00+00:00", "can_decide": True},
             {"thread_id": "b", "route": "account", "plan": [{"tool": "search_kb", "args": {}}],
              "waiting_since": "2026-01-02T00:00:00+00:00", "can_decide": False, "refusal": {"detail": "no"}}]
    assert [r.thread_id for r in queue_rows(items, {}, QueueFilter(sort="amount", desc=True))] == ["a", "b"]
    assert [r.thread_id for r in queue_rows(items, {}, QueueFilter(decidable=True))] == ["a"]
    assert [r.risk for r in queue_rows(items, {}, QueueFilter())] == ["medium", "low"]


def test_risk_and_before_after():
    assert risk_of({"injection": {"flagged": True}, "plan": []}) == "high"
    assert risk_of({"policy_checks": [{"result": "fail"}], "plan": []}) == "high"
    assert risk_of({"plan": [{"tool": "search_kb", "args": {}}]}) == "low"
    item = {"tool": "issue_refund", "change": {"order_id": "O-1", "amount_cents": 500},
            "current": {"order": {"id": "O-1", "refunded_cents": 100, "status": "delivered"}}}
    assert [(c.field, c.before, c.after) for c in before_after(item)] == [("refunded_cents", 100, 600)]
    email = {"tool": "change_email", "change": {"customer_id": "C-1", "new_email": "b@x.io"},
             "current": {"account": {"id": "C-1", "email": "a@x.io"}}}
    assert [(c.field, c.before, c.after) for c in before_after(email)] == [("email", "a@x.io", "b@x.io")]
    given = {"before": {"order": {"refunded_cents": 0}}, "after": {"order": {"refunded_cents": 5}}}
    assert [(c.record, c.after) for c in before_after(given)] == [("order", 5)]


def test_replay_and_fork_from_a_checkpoint_follow_the_roles(env):
    e, client = env
    t = e.add_tenant()
    r = client.post("/tickets", json={"ticket": e.tickets(t)["T-1"], "wait": True},
                    headers={"x-api-key": e.keys[t]["requester"]})
    tid = r.json()["thread_id"]
    approver = sign_in(e, e.keys[t]["approver"])
    page = approver.get(f"/console/threads/{tid}").text
    cp = re.search(r'name="checkpoint_id" value="([^"]+)"', page)
    assert cp is None  # an approver is not offered replay
    requester = sign_in(e, e.keys[t]["requester"])
    page = requester.get(f"/console/threads/{tid}").text
    checkpoints = re.findall(r'name="checkpoint_id" value="([^"]+)"', page)
    assert checkpoints, "the requester is offered replay and fork"
    r = approver.post(f"/console/threads/{tid}/replay", data={"csrf": csrf_of(approver, "/console/approvals"),
                                                             "checkpoint_id": checkpoints[-1], "fork": "1"})
    assert r.status_code == 403 and "replay and fork need role" in r.text
    r = requester.post(f"/console/threads/{tid}/replay", data={"csrf": csrf_of(requester, "/console/approvals"),
                                                              "checkpoint_id": checkpoints[-1], "fork": "1"},
                       follow_redirects=False)
    assert r.status_code == 303
    fork = r.headers["location"].rsplit("/", 1)[-1]
    assert fork != tid
    page = until(requester, f"/console/threads/{fork}", "thread idle")
    assert "thread idle" in page and "<td>replay</td>" in page and f"<td>requester-{t}</td>" in page
    r = requester.post(f"/console/threads/{tid}/replay", data={"csrf": csrf_of(requester, "/console/approvals"),
                                                              "checkpoint_id": "nope"})
    assert r.status_code == 404


def test_only_an_admin_cancels_a_queued_run(tmp_path):
    from fastapi.testclient import TestClient

    with console_env(tmp_path, embedded_worker=False) as e, TestClient(e.app) as client:
        t = e.add_tenant()
        r = client.post("/tickets", json={"ticket": e.tickets(t)["T-1"]}, headers={"x-api-key": e.keys[t]["requester"]})
        tid, run_id = r.json()["thread_id"], r.json()["run"]["run_id"]
        path = f"/console/threads/{tid}/runs/{run_id}/cancel"
        approver = sign_in(e, e.keys[t]["approver"])
        assert "Cancel run" not in approver.get(f"/console/threads/{tid}").text
        r = approver.post(path, data={"csrf": csrf_of(approver, "/console/approvals")})
        assert r.status_code == 403 and "only an admin" in r.text
        admin = sign_in(e, e.keys[t]["admin"])
        assert "Cancel run" in admin.get(f"/console/threads/{tid}").text
        assert admin.post(path, data={"csrf": csrf_of(admin, "/console/approvals")}, follow_redirects=False).status_code == 303
        run = client.get(f"/threads/{tid}/runs/{run_id}", headers={"x-api-key": e.keys[t]["admin"]}).json()
        assert run["status"] == "interrupted", run
        rows = client.get(f"/threads/{tid}/audit", headers={"x-api-key": e.keys[t]["admin"]}).json()["items"]
        assert rows == [] or all(r["kind"] != "tool_call" for r in rows)


def test_deadline_text():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert until_text("2026-01-01T15:59:00Z", now) == "in 3h 59m"
    assert until_text("2026-01-01T11:55:00+00:00", now) == "overdue 5m"
    assert until_text(None, now) == ""
