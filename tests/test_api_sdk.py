"""langgraph-sdk drives a live keel server (uvicorn on a free loopback port, real Postgres)."""

from __future__ import annotations

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401
from support.api_helpers import demo_tickets, load_demo, new_tenant, serve_in_thread

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def live(api_runtime):
    from api.app import create_app

    app = create_app(api_runtime, embedded_worker=True, worker_concurrency=2)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture()
def world(api_runtime):
    tenant = new_tenant()
    load_demo(api_runtime, tenant)
    keys = {
        "req": api_runtime.principals.create_key(tenant, "rita", "requester"),
        "appr": api_runtime.principals.create_key(tenant, "alex", "approver"),
        "admin": api_runtime.principals.create_key(tenant, "ada", "admin"),
    }
    other = new_tenant()
    keys["other_appr"] = api_runtime.principals.create_key(other, "olga", "approver")
    keys["other_req"] = api_runtime.principals.create_key(other, "oscar", "requester")
    return tenant, keys, demo_tickets(tenant)


def test_sdk_interrupt_and_resume(live, world, api_runtime):
    tenant, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    appr = get_sync_client(url=live, api_key=keys["appr"])

    assistants = req.assistants.search(graph_id="support")
    assert [a["graph_id"] for a in assistants] == ["support"]
    assert req.assistants.get(assistants[0]["assistant_id"])["graph_id"] == "support"

    thread = req.threads.create()
    tid = thread["thread_id"]
    state = req.runs.wait(tid, "support", input={"ticket": tickets["T-8"]})
    intr = state["__interrupt__"][0]["value"]
    assert intr["plan_hash"] and intr["plan"] and "policy_checks" in intr and "evidence" in intr
    assert state["status"] == "awaiting_approval"
    assert req.threads.get(tid)["status"] == "interrupted"
    decision = {"decision": "approve", "plan_hash": intr["plan_hash"], "reviewer": "alex", "reason": "ok"}

    # the requester's own key is refused and the thread keeps waiting
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.runs.wait(tid, "support", command={"resume": decision})
    assert e.value.response.status_code == 403
    # another tenant's approver sees no such thread
    other = get_sync_client(url=live, api_key=keys["other_appr"])
    with pytest.raises(httpx.HTTPStatusError) as e:
        other.runs.wait(tid, "support", command={"resume": decision})
    assert e.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as e:
        other.threads.get(tid)
    assert e.value.response.status_code == 404
    assert req.threads.get(tid)["status"] == "interrupted"
    assert req.threads.get_state(tid)["next"] == ["await_approval"]

    final = appr.runs.wait(tid, "support", command={"resume": decision})
    assert final["status"] == "completed", final
    assert "__interrupt__" not in final
    assert api_runtime.backoffice.count_rows("refunds", tenant) == 1
    runs = req.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "success"]
    assert req.threads.get(tid)["status"] == "idle"
    history = req.threads.get_history(tid, limit=50)
    assert len(history) > 5


def test_sdk_background_join_stream_and_busy(live, world):
    tenant, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    tid = req.threads.create()["thread_id"]
    run = req.runs.create(tid, "support", input={"ticket": tickets["T-1"]})
    assert run["status"] in ("pending", "running")
    # multitask reject: a second run on the busy thread is 409
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.runs.create(tid, "support", input={"ticket": tickets["T-1"]}, multitask_strategy="reject")
    assert e.value.response.status_code == 409
    out = req.runs.join(tid, run["run_id"])
    assert out["status"] in ("completed", "escalated", "awaiting_approval")
    assert req.runs.get(tid, run["run_id"])["status"] == "success"

    tid2 = req.threads.create()["thread_id"]
    parts = list(req.runs.stream(tid2, "support", input={"ticket": tickets["T-1"]}, stream_mode=["values", "updates"]))
    events = [p.event for p in parts]
    assert events[0] == "metadata" and "values" in events and "updates" in events
    updates = [p.data for p in parts if p.event == "updates"]
    assert any("triage" in u for u in updates)
    assert parts[-1].data.get("status") or any(p.event == "values" for p in parts)
    found = req.threads.search(status="idle", limit=100)
    assert tid2 in [t["thread_id"] for t in found]
    req.threads.delete(tid2)
    with pytest.raises(httpx.HTTPStatusError):
        req.threads.get(tid2)
