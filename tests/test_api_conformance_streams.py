"""Run streams as LangGraph Server's API reference describes them, driven with langgraph-sdk
against keel on SQLite and on Postgres: every stream mode's event names and payloads,
several modes at once, subgraphs, reconnecting with ``Last-Event-ID`` (on another server),
the ``metadata`` event, ``Location`` headers, and refusals of unknown modes."""

from __future__ import annotations

import json

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_conformance import REPLY, STREAM_TOY, backend, live, world  # noqa: F401
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401
from support.api_helpers import serve_in_thread

pytestmark = pytest.mark.slow

TOPIC = {"topic": "conformance"}


def _stream(url: str, key: str, modes, **kw) -> list:
    client = get_sync_client(url=url, api_key=key)
    tid = client.threads.create()["thread_id"]
    return list(client.runs.stream(tid, STREAM_TOY, input=TOPIC, stream_mode=modes, **kw))


def _events(parts, name):
    return [p.data for p in parts if p.event == name]


def test_metadata_first_with_run_and_thread(live, world):
    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    created: list = []
    parts = list(client.runs.stream(tid, STREAM_TOY, input=TOPIC, on_run_created=created.append))
    assert parts[0].event == "metadata"
    assert parts[0].data == {"run_id": created[0]["run_id"], "thread_id": tid, "attempt": 1}
    assert {p.event for p in parts[1:]} == {"values"}  # the default mode
    assert all(p.id is not None for p in parts[1:])  # every stored event can be resumed after


def test_values_and_updates(live, world):
    _, keys, _ = world
    values = _events(_stream(live, keys["req"], "values"), "values")
    assert values[-1]["reply"] == REPLY and values[-1]["steps"] == ["progress", "chat"]
    assert values[-1]["note"] == "inner on conformance"
    updates = _events(_stream(live, keys["req"], "updates"), "updates")
    assert [list(u) for u in updates] == [["progress"], ["child"], ["chat"]]
    assert updates[0] == {"progress": {"steps": ["progress"]}}


def test_custom_progress_from_stream_writer(live, world):
    _, keys, _ = world
    parts = _stream(live, keys["req"], "custom")
    assert [p.event for p in parts] == ["metadata", "custom", "custom", "custom"]
    assert [p.data for p in parts[1:]] == [{"progress": n, "topic": "conformance"} for n in (0, 50, 100)]


def test_messages_tuple_streams_token_chunks(live, world):
    _, keys, _ = world
    msgs = _events(_stream(live, keys["req"], "messages-tuple"), "messages")
    assert len(msgs) > 2, "the answer arrives in several chunks"
    assert all(isinstance(m, list) and len(m) == 2 for m in msgs)
    chunks = [m for m, meta in msgs if m["type"] == "AIMessageChunk"]
    assert "".join(c["content"] for c in chunks) == REPLY
    assert len({c["id"] for c in chunks}) == 1
    meta = msgs[0][1]
    assert meta["langgraph_node"] == "chat" and "lease_owner" not in meta


def test_messages_partial_accumulates(live, world):
    _, keys, _ = world
    parts = _stream(live, keys["req"], "messages")
    names = [p.event for p in parts[1:]]
    assert names[0] == "messages/metadata" and names.count("messages/metadata") == 1
    (mid, meta), = parts[1].data.items()
    assert meta["metadata"]["langgraph_node"] == "chat"
    partial = _events(parts, "messages/partial")
    contents = [p[0]["content"] for p in partial]
    assert len(contents) > 2 and contents[-1] == REPLY
    assert all(REPLY.startswith(c) for c in contents) and contents == sorted(contents, key=len)
    assert all(p[0]["id"] == mid for p in partial)


def test_gateway_answers_stream_as_messages(live, world):
    """The support graph's model calls (the local provider) stream their accepted answers."""
    _, keys, tickets = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    parts = list(client.runs.stream(tid, "support", input={"ticket": tickets["T-1"]}, stream_mode="messages-tuple"))
    msgs = [p.data for p in parts if p.event == "messages"]
    by_id: dict[str, list] = {}
    for m, meta in msgs:
        by_id.setdefault(m["id"], []).append((m, meta))
    assert len(by_id) >= 2  # triage, extract, (plan)
    triage = next(v for v in by_id.values() if v[0][1]["langgraph_node"] == "triage")
    chunks = [m for m, _ in triage if m["type"] == "AIMessageChunk"]
    assert len(chunks) > 1
    answer = json.loads("".join(c["content"] for c in chunks))
    assert answer["route"] == "billing"


def test_debug_checkpoints_and_tasks(live, world):
    _, keys, _ = world
    debug = _events(_stream(live, keys["req"], "debug"), "debug")
    kinds = {d["type"] for d in debug}
    assert kinds == {"checkpoint", "task", "task_result"}
    cps = [d["payload"] for d in debug if d["type"] == "checkpoint"]
    assert all(c["checkpoint"]["checkpoint_id"] and c["checkpoint"]["thread_id"] for c in cps)
    assert cps[0]["parent_checkpoint"] is None and cps[-1]["parent_checkpoint"]["checkpoint_id"]
    # configs carry only what names a checkpoint (keel's run configuration stays inside)
    configs = [c[k] for c in cps for k in ("config", "parent_config") if c[k]]
    assert configs and all(set(c) == {"configurable"} and set(c["configurable"]) <= {
        "thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map"} for c in configs)

    cks = _events(_stream(live, keys["req"], "checkpoints"), "checkpoints")
    assert {"values", "next", "metadata", "checkpoint", "parent_checkpoint", "tasks"} <= set(cks[-1])
    assert cks[-1]["values"]["reply"] == REPLY and cks[-1]["next"] == []
    assert set(cks[-1]["config"]["configurable"]) <= {"thread_id", "checkpoint_ns", "checkpoint_id", "checkpoint_map"}

    tasks = _events(_stream(live, keys["req"], "tasks"), "tasks")
    starts = [t for t in tasks if "input" in t]
    results = [t for t in tasks if "result" in t]
    assert [t["name"] for t in starts] == ["progress", "child", "chat"]
    assert {t["id"] for t in starts} == {t["id"] for t in results}


def test_events_mode(live, world):
    _, keys, _ = world
    events = _events(_stream(live, keys["req"], "events"), "events")
    assert events[0]["event"] == "on_chain_start" and events[0]["parent_ids"] == []
    assert events[-1]["event"] == "on_chain_end" and events[-1]["run_id"] == events[0]["run_id"]
    names = {(e["event"], e["name"]) for e in events}
    assert ("on_chain_start", "progress") in names and ("on_chain_end", "chat") in names
    stream = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(e["data"]["chunk"]["content"] for e in stream) == REPLY
    assert all(events[0]["run_id"] in e["parent_ids"] for e in stream)


def test_several_modes_and_subgraphs(live, world):
    _, keys, _ = world
    parts = _stream(live, keys["req"], ["values", "updates", "custom"])
    assert {p.event for p in parts} == {"metadata", "values", "updates", "custom"}
    ids = [int(p.id) for p in parts[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert not any("|" in p.event for p in parts)

    parts = _stream(live, keys["req"], ["updates", "values"], stream_subgraphs=True)
    sub = [p for p in parts if p.event.startswith("updates|child:")]
    assert sub and sub[0].data == {"inner": {"note": "inner on conformance"}}
    assert any(p.event.startswith("values|child:") for p in parts)
    assert [list(p.data) for p in parts if p.event == "updates"] == [["progress"], ["child"], ["chat"]]


def test_reconnect_with_last_event_id_on_another_server(live, world, backend):
    """A client that lost its stream rejoins with ``Last-Event-ID`` on any server (this one
    runs no worker) and gets exactly the events after that id."""
    from api.app import create_app

    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    full = list(client.runs.stream(tid, STREAM_TOY, input=TOPIC, stream_mode=["updates", "custom"]))
    run_id = full[0].data["run_id"]
    cut = 3  # metadata + two events seen, then the connection dropped
    with serve_in_thread(create_app(backend[1], embedded_worker=False)) as other_url:
        other = get_sync_client(url=other_url, api_key=keys["req"])
        rest = list(other.runs.join_stream(tid, run_id, last_event_id=full[cut - 1].id))
        assert [(p.event, p.data, p.id) for p in rest] == [(p.event, p.data, p.id) for p in full[cut:]]
        only = list(other.runs.join_stream(tid, run_id, stream_mode="custom"))
        assert [p.event for p in only] == ["metadata", "custom", "custom", "custom"]


def test_location_headers_and_refusals(live, world):
    _, keys, _ = world
    h = {"x-api-key": keys["req"]}
    with httpx.Client(base_url=live, headers=h, timeout=30) as http:
        tid = http.post("/threads", json={}).json()["thread_id"]
        with http.stream("POST", f"/threads/{tid}/runs/stream", json={"assistant_id": STREAM_TOY, "input": TOPIC}) as r:
            assert r.status_code == 200
            loc = r.headers["location"]
            body = r.read().decode()
        run_id = json.loads(body.split("data: ", 1)[1].split("\n", 1)[0])["run_id"]
        assert loc == f"/threads/{tid}/runs/{run_id}/stream"
        assert r.headers["content-location"] == f"/threads/{tid}/runs/{run_id}"
        r = http.post(f"/threads/{tid}/runs/wait", json={"assistant_id": STREAM_TOY, "input": TOPIC})
        assert r.status_code == 200 and r.json()["reply"] == REPLY
        assert r.headers["location"].startswith(f"/threads/{tid}/runs/") and r.headers["location"].endswith("/join")
        r = http.post("/runs/stream", json={"assistant_id": STREAM_TOY, "input": TOPIC})
        assert r.headers["location"].endswith("/stream") and r.headers["location"].startswith("/threads/")

        runs_before = len(http.get(f"/threads/{tid}/runs").json())
        for mode, code in (("tools", 422), ("lifecycle", 422), ("nonsense", 422), (["values", "bogus"], 422)):
            r = http.post(f"/threads/{tid}/runs/stream", json={"assistant_id": STREAM_TOY, "input": TOPIC,
                                                                 "stream_mode": mode})
            assert r.status_code == code, (mode, r.text)
            assert "stream_mode" in r.text or "stream modes" in r.text
        r = http.get(f"/threads/{tid}/runs/{run_id}/stream", params={"stream_mode": "tools"})
        assert r.status_code == 422
        assert len(http.get(f"/threads/{tid}/runs").json()) == runs_before  # nothing was queued
