"""Threads and state as LangGraph Server's API reference has them, driven with langgraph-sdk
against keel on SQLite and on Postgres, within keel's rules: ``threads.copy``,
``threads.update_state`` (refused where it would bypass policy, audited with its author),
continuing a run paused by ``interrupt_before`` with ``input: null``, ``context`` on runs,
deleting a thread with a run in flight, ``state_updated_at``."""

from __future__ import annotations

import time

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_conformance import CONTEXT_TOY, REPLY, STREAM_TOY, backend, live, world  # noqa: F401
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401

pytestmark = pytest.mark.slow

TOPIC = {"topic": "conformance"}


def _status(e: pytest.ExceptionInfo) -> int:
    return e.value.response.status_code


def _pending_support_thread(client, tickets) -> tuple[str, dict]:
    tid = client.threads.create()["thread_id"]
    state = client.runs.wait(tid, "support", input={"ticket": tickets["T-8"]})
    return tid, state["__interrupt__"][0]["value"]


def test_copy_thread(live, world):
    _, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    tid = req.threads.create(metadata={"team": "a"})["thread_id"]
    req.runs.wait(tid, STREAM_TOY, input=TOPIC)
    copy = req.threads.copy(tid)
    assert copy["thread_id"] != tid and copy["metadata"]["team"] == "a" and copy["metadata"]["copied_from"] == tid
    assert copy["values"] == req.threads.get_state(tid)["values"] and copy["values"]["reply"] == REPLY
    assert copy["state_updated_at"]
    assert len(req.threads.get_history(copy["thread_id"], limit=100)) == len(req.threads.get_history(tid, limit=100))
    assert req.runs.list(copy["thread_id"]) == []

    # a copy of a thread waiting for approval waits too, and is decided there anew
    ptid, intr = _pending_support_thread(req, tickets)
    pcopy = req.threads.copy(ptid)
    assert pcopy["status"] == "interrupted"
    assert req.threads.get_state(pcopy["thread_id"])["next"] == ["await_approval"]
    assert req.threads.get(ptid)["status"] == "interrupted"

    before = len(req.threads.search(limit=1000))
    for key, code in ((keys["other_req"], 404), (keys["appr"], 403)):
        with pytest.raises(httpx.HTTPStatusError) as e:
            get_sync_client(url=live, api_key=key).threads.copy(tid)
        assert _status(e) == code
    assert len(req.threads.search(limit=1000)) == before


def test_update_state_on_a_graph_without_approval_block(live, world):
    _, keys, _ = world
    req = get_sync_client(url=live, api_key=keys["req"])
    tid = req.threads.create()["thread_id"]
    req.runs.wait(tid, STREAM_TOY, input=TOPIC)
    out = req.threads.update_state(tid, {"topic": "edited", "reply": "by hand"}, as_node="chat")
    assert out["checkpoint"]["thread_id"] == tid and out["checkpoint"]["checkpoint_id"]
    state = req.threads.get_state(tid)
    assert state["values"]["topic"] == "edited" and state["values"]["reply"] == "by hand"
    assert state["checkpoint"]["checkpoint_id"] == out["checkpoint"]["checkpoint_id"]
    assert state["metadata"]["source"] == "update"
    audit = httpx.get(f"{live}/threads/{tid}/audit", headers={"x-api-key": keys["req"]}).json()["items"]
    writes = [r for r in audit if r["kind"] == "state_update"]
    assert len(writes) == 1 and writes[0]["actor"] == "rita"
    assert writes[0]["data"]["as_node"] == "chat" and writes[0]["data"]["fields"] == ["reply", "topic"]

    with pytest.raises(httpx.HTTPStatusError) as e:
        req.threads.update_state(tid, {"topic": "x"}, as_node="no_such_node")
    assert _status(e) == 422 and "no_such_node" in e.value.response.text
    for key, code in ((keys["other_req"], 404), (keys["appr"], 403)):
        with pytest.raises(httpx.HTTPStatusError) as e:
            get_sync_client(url=live, api_key=key).threads.update_state(tid, {"topic": "x"}, as_node="chat")
        assert _status(e) == code
    assert req.threads.get_state(tid)["checkpoint"] == state["checkpoint"]  # refusals changed nothing


def test_update_state_cannot_bypass_policy(live, world):
    _, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    admin = get_sync_client(url=live, api_key=keys["admin"])
    tid, intr = _pending_support_thread(req, tickets)
    head = req.threads.get_state(tid)["checkpoint"]
    refused = [({}, None), ({}, "await_approval"), ({"approval": {"decision": "approve"}}, "await_approval"),
               ({"route": "billing"}, "triage")]  # anything while the approval is pending
    for values, as_node in refused:
        with pytest.raises(httpx.HTTPStatusError) as e:
            admin.threads.update_state(tid, values, as_node=as_node)
        assert _status(e) == 403, (values, as_node)
        assert e.value.response.json()["code"] == "state_update_refused" and "approval" in e.value.response.text
    assert req.threads.get_state(tid)["checkpoint"] == head
    assert req.threads.get(tid)["status"] == "interrupted"

    done = req.threads.create()["thread_id"]
    req.runs.wait(done, "support", input={"ticket": tickets["T-1"]})
    head = req.threads.get_state(done)["checkpoint"]
    for values, as_node, words in (({"status": "completed"}, "triage", "status"),
                                   ({"plan": None, "policy": None}, "triage", "plan"),
                                   ({"ticket": tickets["T-8"]}, "triage", "ticket"),
                                   ({"answer": "x"}, "execute_action", "before the policy check"),
                                   ({"answer": "x"}, "policy_check", "before the policy check"),
                                   ({"answer": "x"}, None, "before the policy check")):
        with pytest.raises(httpx.HTTPStatusError) as e:
            admin.threads.update_state(done, values, as_node=as_node)
        assert _status(e) == 403 and words in e.value.response.text, (values, as_node, e.value.response.text)
    assert req.threads.get_state(done)["checkpoint"] == head
    # before the gate a write is allowed: the graph then goes through the policy check again
    out = admin.threads.update_state(done, {"answer": "edited"}, as_node="triage")
    assert out["checkpoint"]["checkpoint_id"] != head["checkpoint_id"]
    assert req.threads.get_state(done)["next"] == ["retrieve_context"]
    assert req.threads.get(done)["status"] == "interrupted"


def test_interrupt_before_continues_with_null_input(live, world):
    _, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    tid = req.threads.create()["thread_id"]
    req.runs.wait(tid, STREAM_TOY, input=TOPIC, interrupt_before=["chat"])
    assert req.threads.get(tid)["status"] == "interrupted" and req.threads.get_state(tid)["next"] == ["chat"]
    out = req.runs.wait(tid, STREAM_TOY, input=None)
    assert out["reply"] == REPLY and req.threads.get(tid)["status"] == "idle"

    # on the support graph, going on from a pause still passes the approval
    tid = req.threads.create()["thread_id"]
    req.runs.wait(tid, "support", input={"ticket": tickets["T-8"]}, interrupt_before=["policy_check"])
    assert req.threads.get_state(tid)["next"] == ["policy_check"]
    out = req.runs.wait(tid, "support", input=None)
    assert out["__interrupt__"][0]["value"]["type"] == "plan_approval"
    # a fresh support thread still needs its ticket
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.runs.wait(req.threads.create()["thread_id"], "support", input=None)
    assert _status(e) == 422


def test_context_on_runs(live, world):
    _, keys, tickets = world
    req = get_sync_client(url=live, api_key=keys["req"])
    out = req.runs.wait(None, CONTEXT_TOY, input={}, context={"who": "ann", "greeting": "hi"})
    assert out["reply"] == "hi ann"
    threads = len(req.threads.search(limit=1000))
    for assistant, context, words in ((CONTEXT_TOY, {"whom": "ann"}, "Caller"),
                                      ("support", {"tools": "mine"}, "keel's own context")):
        with pytest.raises(httpx.HTTPStatusError) as e:
            req.runs.wait(None, assistant, input={"ticket": tickets["T-1"]} if assistant == "support" else {},
                          context=context)
        assert _status(e) == 422 and words in e.value.response.text, e.value.response.text
    assert len(req.threads.search(limit=1000)) == threads  # refused requests left nothing behind


def test_delete_thread_with_a_run_in_flight(live, world):
    _, keys, _ = world
    req = get_sync_client(url=live, api_key=keys["req"])
    tid = req.threads.create()["thread_id"]
    run = req.runs.create(tid, STREAM_TOY, input={**TOPIC, "sleep": 1.0})
    queued = req.runs.create(tid, STREAM_TOY, input=TOPIC, multitask_strategy="enqueue")
    deadline = time.monotonic() + 10
    while req.runs.get(tid, run["run_id"])["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    req.threads.delete(tid)
    assert time.monotonic() - t0 < 10
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.threads.get(tid)
    assert _status(e) == 404
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.runs.get(tid, queued["run_id"])
    assert _status(e) == 404
