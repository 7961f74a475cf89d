"""Daily quotas through keel's API, on the embedded SQLite store and on Postgres.

The issue: the shipped tenant budget was spent after ~147 runs even on the offline local
provider (it charged estimated tokens), and one requester key could spend it in seconds,
escalating every run of the tenant until the day ended. Here: the local provider costs
nothing, model calls are charged to the tenant and to the requester, a spent quota is a
429 with ``Retry-After`` *before* anything is queued or stored (naming whose quota), other
users of the tenant keep running while one user's share is spent, approvals of runs
already admitted still go through, and crossing 80% of a quota is alerted once a day.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone, UTC
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from gateway import GatewayCall, LocalProvider, ModelGateway, Usage
from support.api_helpers import demo_tickets, load_demo, new_tenant

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
SECONDS_TO_MIDNIGHT = "43200"  # 12:00 UTC → the next UTC day

QUOTAS = {  # small quotas so that a test can spend them: the pack's [budgets] section
    "tenant_daily_tokens = 5000000": "tenant_daily_tokens = 10000",
    "user_daily_tokens = 500000": "user_daily_tokens = 5000",
    "tenant_daily_runs = 20000": "tenant_daily_runs = 8",  # alert at 7 (ceil of 6.4)
    "user_daily_runs = 2000": "user_daily_runs = 5",  # alert at 4
}


def _pack(tmp_path_factory) -> str:
    from guards.pack import DEFAULT_POLICY_PATH

    text = DEFAULT_POLICY_PATH.read_text()
    for old, new in QUOTAS.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path_factory.mktemp("pack") / "small-quotas.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory):
    """``(runtime, client)``: keel's app with an embedded worker on SQLite or on Postgres."""
    from api.app import create_app
    from keel.config import Settings
    from engine.runtime import Runtime

    url = None
    if request.param == "postgres":
        pg_url = request.getfixturevalue("pg_url")
        url = pg_url + ("&" if "?" in pg_url else "?") + "application_name=keel_budget_admission"
    settings = Settings(database_url=url, data_dir=tmp_path_factory.mktemp("budget-rt"), now=NOW,
                        plan_signing_key="budget-test-key", policy_file=_pack(tmp_path_factory))
    rt = Runtime(settings)
    app = create_app(rt, embedded_worker=True, worker_concurrency=2, worker_kwargs={"poll_s": 0.05})
    with TestClient(app) as client:
        yield rt, client
    rt.close()


@pytest.fixture()
def w(env):
    """A fresh tenant with demo records and keys: requesters rita and ravi, approver alex, admin ada."""
    rt, _ = env
    t = new_tenant()
    load_demo(rt, t)
    pk = rt.principals.create_key

    class W:
        tenant = t
        rita = {"x-api-key": pk(t, "rita", "requester")}
        ravi = {"x-api-key": pk(t, "ravi", "requester")}
        alex = {"x-api-key": pk(t, "alex", "approver")}
        ada = {"x-api-key": pk(t, "ada", "admin")}
        tickets = demo_tickets(t)

    yield W
    _settle(rt, t)


def _settle(rt: Any, tenant: str, timeout: float = 60.0) -> None:
    """Until the worker has finished the tenant's queued runs (before reading its whole audit
    chain, and before the runtime closes under a run in flight)."""
    deadline = time.monotonic() + timeout
    while rt.db.fetchone("SELECT COUNT(*) AS n FROM api_runs WHERE tenant = ? AND status IN ('pending', 'running')",
                         (tenant,))["n"]:
        assert time.monotonic() < deadline, "runs still in flight"
        time.sleep(0.05)


def _stored(rt: Any, tenant: str) -> tuple[int, int]:
    """(threads, runs) the tenant has in the database."""
    threads = rt.db.fetchone("SELECT COUNT(*) AS n FROM api_threads WHERE tenant = ?", (tenant,))["n"]
    runs = rt.db.fetchone("SELECT COUNT(*) AS n FROM api_runs WHERE tenant = ?", (tenant,))["n"]
    return int(threads), int(runs)


def _run_body(w: Any, ticket: str = "T-10", **extra: Any) -> dict[str, Any]:
    return {"assistant_id": "support", "input": {"ticket": w.tickets[ticket]}, **extra}


def _every_start(client: TestClient, w: Any, h: dict[str, str], tid: str) -> list[Any]:
    """One request to start a run through every route that starts one."""
    return [
        client.post("/tickets", json={"ticket": w.tickets["T-1"]}, headers=h),
        client.post("/tickets", json={"ticket": w.tickets["T-1"], "wait": True}, headers=h),
        client.post(f"/threads/{tid}/runs", json=_run_body(w), headers=h),
        client.post(f"/threads/{tid}/runs/wait", json=_run_body(w), headers=h),
        client.post(f"/threads/{tid}/runs/stream", json=_run_body(w), headers=h),
        client.post(f"/threads/{uuid.uuid4()}/runs", json=_run_body(w, if_not_exists="create"), headers=h),
        client.post("/runs", json=_run_body(w), headers=h),
        client.post("/runs/wait", json=_run_body(w), headers=h),
        client.post("/runs/stream", json=_run_body(w), headers=h),
    ]


def _assert_refused(responses: list[Any], code: str, setting: str) -> None:
    for r in responses:
        assert r.status_code == 429, (r.request.url, r.status_code, r.text)
        assert r.headers["retry-after"] == SECONDS_TO_MIDNIGHT
        body = r.json()
        assert body["code"] == code and setting in body["detail"], body


def _start(client: TestClient, w: Any, h: dict[str, str], ticket: str = "T-10", wait: bool = False) -> dict[str, Any]:
    r = client.post("/tickets", json={"ticket": w.tickets[ticket], "wait": wait}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()


class Metered:
    """A model provider stand-in: the local rules' answers, with the usage a model reports."""

    name = "metered"

    def __init__(self, usage: Usage) -> None:
        self.usage = usage

    def complete(self, task: str, schema: type[BaseModel], system: str, payload: dict) -> tuple[Any, Usage]:
        out, _ = LocalProvider().complete(task, schema, system, payload)
        return out, self.usage


# -- honest accounting -------------------------------------------------------------------------
def test_local_provider_costs_nothing_through_the_gateway() -> None:
    from keel.types import Ticket

    calls: list[GatewayCall] = []
    ticket = Ticket(id="T-1", tenant="acme", customer_id="C-1", subject="Refund", body="Please refund order O-1 in full.")
    ModelGateway([LocalProvider()], on_call=calls.append).triage(ticket)
    assert [(c.provider, c.tokens) for c in calls] == [("local", 0)]
    # a model is charged what it reports, or an estimate when it reports nothing
    calls.clear()
    ModelGateway([Metered(Usage(tokens_in=100, tokens_out=20))], on_call=calls.append).triage(ticket)
    assert [(c.tokens_in, c.tokens_out) for c in calls] == [(100, 20)]
    calls.clear()
    ModelGateway([Metered(Usage())], on_call=calls.append).triage(ticket)
    assert calls[0].tokens_in > 50 and calls[0].tokens_out > 0  # the system prompt alone is hundreds of characters


def test_local_provider_runs_charge_no_tokens(env, w):
    rt, client = env
    out = _start(client, w, w.rita, "T-1", wait=True)
    assert out["result"]["status"] == "completed"
    assert rt.tokens.used(w.tenant, NOW) == 0 and rt.tokens.used(w.tenant, NOW, user="rita") == 0
    calls = [r for r in client.get(f"/threads/{out['thread_id']}/audit", headers=w.alex).json()["items"]
             if r["kind"] == "model_call"]
    assert calls and all(c["data"]["tokens_in"] == 0 and c["data"]["tokens_out"] == 0 for c in calls)
    assert (rt.tokens.runs(w.tenant, NOW), rt.tokens.runs(w.tenant, NOW, user="rita")) == (1, 1)


def test_model_tokens_are_charged_to_the_tenant_and_the_requester(env, w, monkeypatch):
    rt, client = env
    monkeypatch.setitem(rt.__dict__, "gateway", ModelGateway([Metered(Usage(tokens_in=100, tokens_out=20))]))
    out = _start(client, w, w.rita, "T-1", wait=True)
    assert out["result"]["status"] == "completed"
    n = len([r for r in client.get(f"/threads/{out['thread_id']}/audit", headers=w.alex).json()["items"]
             if r["kind"] == "model_call"])
    assert n >= 2
    assert rt.tokens.used(w.tenant, NOW) == rt.tokens.used(w.tenant, NOW, user="rita") == 120 * n
    assert rt.tokens.used(w.tenant, NOW, user="ravi") == 0


def test_a_run_that_exceeds_the_user_tokens_mid_way_still_escalates(env, w, monkeypatch):
    rt, client = env
    monkeypatch.setitem(rt.__dict__, "gateway", ModelGateway([Metered(Usage(tokens_in=100, tokens_out=20))]))
    rt.tokens.charge(w.tenant, 4999, NOW, allow_overdraft=True, user="rita")  # one token of rita's 5,000 left
    out = _start(client, w, w.rita, "T-5", wait=True)  # admitted: the share is not spent yet
    assert out["result"]["status"] == "escalated" and out["result"]["reason_codes"] == ["budget_exceeded"]
    assert rt.backoffice.get_order(w.tenant, "O-5009")["status"] == "placed"  # nothing was done
    _assert_refused([client.post("/tickets", json={"ticket": w.tickets["T-1"]}, headers=w.rita)],
                    "user_quota_exceeded", "user_daily_tokens")
    assert _start(client, w, w.ravi, "T-10", wait=True)["result"]["status"] == "completed"


# -- admission ---------------------------------------------------------------------------------
def test_a_spent_user_quota_is_429_for_that_user_only_and_stores_nothing(env, w):
    rt, client = env
    tid = client.post("/threads", json={}, headers=w.rita).json()["thread_id"]  # a thread is not a run
    admitted = [client.post("/tickets", json={"ticket": w.tickets["T-10"]}, headers=w.rita),
                client.post("/runs", json=_run_body(w), headers=w.rita),
                client.post(f"/threads/{uuid.uuid4()}/runs", json=_run_body(w, if_not_exists="create"), headers=w.rita),
                client.post("/runs/wait", json=_run_body(w), headers=w.rita),
                client.post("/tickets", json={"ticket": w.tickets["T-10"]}, headers=w.rita)]
    assert [r.status_code for r in admitted] == [201, 200, 200, 200, 201]
    assert rt.tokens.runs(w.tenant, NOW, user="rita") == 5

    before = _stored(rt, w.tenant)
    _assert_refused(_every_start(client, w, w.rita, tid), "user_quota_exceeded", "user_daily_runs")
    assert _stored(rt, w.tenant) == before  # no thread, no run for a refused request
    assert rt.tokens.runs(w.tenant, NOW, user="rita") == 5  # and nothing counted

    # another user of the same tenant still runs
    assert _start(client, w, w.ravi, "T-10", wait=True)["result"]["status"] == "completed"
    r = client.post(f"/threads/{tid}/runs/wait", json=_run_body(w), headers=w.ravi)
    assert r.status_code == 200 and r.json()["status"] == "completed"


def test_a_spent_tenant_quota_is_429_for_every_user(env, w):
    rt, client = env
    for h in [w.rita] * 5 + [w.ravi] * 3:
        _start(client, w, h)
    assert rt.tokens.runs(w.tenant, NOW) == 8
    tid = client.post("/threads", json={}, headers=w.ada).json()["thread_id"]
    before = _stored(rt, w.tenant)
    for h in (w.ravi, w.ada):
        _assert_refused(_every_start(client, w, h, tid), "tenant_quota_exceeded", "tenant_daily_runs")
    assert _stored(rt, w.tenant) == before
    # a new user of the tenant too
    newcomer = {"x-api-key": rt.principals.create_key(w.tenant, "nina", "requester")}
    _assert_refused([client.post("/runs/wait", json=_run_body(w), headers=newcomer)],
                    "tenant_quota_exceeded", "tenant_daily_runs")
    # another tenant is not affected
    other = new_tenant()
    load_demo(rt, other)
    okey = {"x-api-key": rt.principals.create_key(other, "rita", "requester")}
    r = client.post("/tickets", json={"ticket": demo_tickets(other)["T-10"], "wait": True}, headers=okey)
    assert r.status_code == 201 and r.json()["result"]["status"] == "completed"


def test_spent_tenant_tokens_refuse_every_user(env, w):
    rt, client = env
    rt.tokens.charge(w.tenant, 10_000, NOW, allow_overdraft=True, user="someone")
    tid = client.post("/threads", json={}, headers=w.rita).json()["thread_id"]
    before = _stored(rt, w.tenant)
    for h in (w.rita, w.ravi, w.ada):
        _assert_refused(_every_start(client, w, h, tid), "tenant_quota_exceeded", "tenant_daily_tokens")
    assert _stored(rt, w.tenant) == before and rt.tokens.runs(w.tenant, NOW) == 0


def test_approvals_go_through_when_every_quota_is_spent(env, w):
    rt, client = env
    waiting = [_start(client, w, w.rita, t, wait=True) for t in ("T-8", "T-14")]
    hashes = [o["result"]["__interrupt__"][0]["value"]["plan_hash"] for o in waiting]
    # spend everything: the tenant's tokens and runs, rita's runs
    rt.tokens.charge(w.tenant, 10_000, NOW, allow_overdraft=True, user="rita")
    while rt.tokens.admit(w.tenant, "filler", NOW) is None:
        pass
    _assert_refused([client.post("/runs", json=_run_body(w), headers=w.rita)], "tenant_quota_exceeded",
                    "tenant_daily_tokens")

    r = client.post(f"/approvals/{waiting[0]['thread_id']}/approve", json={"plan_hash": hashes[0]}, headers=w.alex)
    assert r.status_code == 200 and r.json()["result"]["status"] == "completed", r.text
    cmd = {"assistant_id": "support", "command": {"resume": {"decision": "approve", "plan_hash": hashes[1]}}}
    r = client.post(f"/threads/{waiting[1]['thread_id']}/runs/wait", json=cmd, headers=w.alex)
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text


def test_crossing_80_percent_is_alerted_once_per_tenant_and_user(env, w):
    from prometheus_client import REGISTRY

    rt, client = env

    def alerts() -> list[tuple[str, str, str | None, int]]:
        rows = client.get("/audit?limit=1000", headers=w.ada).json()["items"]
        return [(r["data"]["scope"], r["data"]["quota"], r["data"]["user"], r["data"]["used"])
                for r in rows if r["kind"] == "budget_alert"]

    for _ in range(3):
        _start(client, w, w.rita)
    assert alerts() == []
    _start(client, w, w.rita)  # 4 of rita's 5 runs: 80%
    assert alerts() == [("user", "runs", "rita", 4)]
    _start(client, w, w.rita)  # 5 of 5: no second alert
    _start(client, w, w.ravi)  # tenant at 6 of 8
    assert alerts() == [("user", "runs", "rita", 4)]
    _start(client, w, w.ravi)  # tenant at 7 of 8: 80% (ceil of 6.4)
    _start(client, w, w.ravi)  # 8 of 8
    client.post("/tickets", json={"ticket": w.tickets["T-1"]}, headers=w.ravi)  # refused: no alert either
    assert alerts() == [("user", "runs", "rita", 4), ("tenant", "runs", None, 7)]
    labels = {"tenant": w.tenant, "quota": "runs"}
    assert REGISTRY.get_sample_value("keel_quota_alerts_total", {**labels, "scope": "user"}) == 1.0
    assert REGISTRY.get_sample_value("keel_quota_alerts_total", {**labels, "scope": "tenant"}) == 1.0
    assert REGISTRY.get_sample_value("keel_admission_refusals_total", {**labels, "scope": "tenant"}) == 1.0
    assert REGISTRY.get_sample_value("keel_quota_used_ratio", labels) == 1.0
    _settle(rt, w.tenant)
    assert client.get("/audit/verify", headers=w.ada).json()["ok"]


def test_quota_days_follow_the_wall_clock_on_the_embedded_demo(tmp_path_factory):
    """The embedded demo runs on a frozen day (its refund windows); quotas must not, or a
    spent quota would never reset: admission and model charges count on the real UTC day."""
    from engine.admission import admitted
    from engine.runtime import DEMO_NOW, Runtime
    from keel.config import Settings
    from nodes.common import model_hook

    rt = Runtime(Settings(data_dir=tmp_path_factory.mktemp("demo-rt"), plan_signing_key="k",
                          policy_file=_pack(tmp_path_factory)))
    try:
        assert rt.now() == DEMO_NOW
        p = rt.principals.authenticate(rt.principals.create_key("demo", "rita", "requester"))
        with admitted(rt, p):
            pass
        ticket = {"id": "T-q", "tenant": "demo", "customer_id": "C-1", "channel": "email", "subject": "s", "body": "b"}
        hook = model_hook(rt.support_context(), {"ticket": ticket, "requester": "rita"})
        hook(GatewayCall(task="triage", provider="metered", ok=True, tokens_in=10, tokens_out=2, ms=1.0))
        today = datetime.now(UTC)
        assert today.date() != DEMO_NOW.date()
        assert (rt.tokens.runs("demo", today, user="rita"), rt.tokens.used("demo", today, user="rita")) == (1, 12)
        assert (rt.tokens.runs("demo", DEMO_NOW), rt.tokens.used("demo", DEMO_NOW)) == (0, 0)
    finally:
        rt.close()
