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


def test_sdk_stateless_runs(live, world, api_runtime):
    """``runs.wait/create/stream(None, …)`` run on a thread created for them, kept (with
    its approval, when the plan needs one) and scoped to the caller's tenant; a request
    keel refuses leaves no thread behind."""
    tenant, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    appr = get_sync_client(url=live, api_key=keys["appr"])
    threads_before = len(req.threads.search(limit=1000))

    out = req.runs.wait(None, "support", input={"ticket": tickets["T-1"]})
    assert out["status"] == "completed" and out["ticket"]["id"] == tickets["T-1"]["id"]

    # an approval-required ticket: the new thread waits, and the approval is decided on it
    seen: list[dict] = []
    state = req.runs.wait(None, "support", input={"ticket": tickets["T-8"]}, on_run_created=seen.append)
    intr = state["__interrupt__"][0]["value"]
    tid = seen[0]["thread_id"]
    assert req.threads.get(tid)["status"] == "interrupted"
    refunds = api_runtime.backoffice.count_rows("refunds", tenant)
    final = appr.runs.wait(tid, "support", command={"resume": {"decision": "approve", "plan_hash": intr["plan_hash"]}})
    assert final["status"] == "completed"
    assert api_runtime.backoffice.count_rows("refunds", tenant) == refunds + 1

    run = req.runs.create(None, "support", input={"ticket": tickets["T-5"]})
    assert req.runs.join(run["thread_id"], run["run_id"])["status"] in ("completed", "escalated")
    parts = list(req.runs.stream(None, "support", input={"ticket": tickets["T-10"]}, stream_mode="updates"))
    assert parts[0].event == "metadata" and any(p.event == "updates" and "triage" in p.data for p in parts)
    assert len(req.threads.search(limit=1000)) == threads_before + 4

    # refused: another tenant sees none of these threads; bad requests leave no thread
    other = get_sync_client(url=live, api_key=keys["other_req"])
    with pytest.raises(httpx.HTTPStatusError) as e:
        other.threads.get(tid)
    assert e.value.response.status_code == 404
    t1 = {"ticket": tickets["T-1"]}
    refused = [(req, {"input": t1, "on_completion": "delete"}, 422), (req, {"input": t1, "checkpoint_id": "x"}, 422),
               (appr, {"input": t1}, 403),  # an approver starts no runs
               (appr, {"command": {"resume": {"decision": "approve", "plan_hash": "0" * 64}}}, 409)]  # nothing pending
    for client, kwargs, code in refused:
        with pytest.raises(httpx.HTTPStatusError) as e:
            client.runs.wait(None, "support", **kwargs)
        assert e.value.response.status_code == code, (kwargs, e.value.response.text)
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.runs.wait(None, "support", input={"ticket": {"id": "T-x"}})
    assert e.value.response.status_code == 422
    assert len(req.threads.search(limit=1000)) == threads_before + 4
    assert len(appr.threads.search(limit=1000)) == threads_before + 4
