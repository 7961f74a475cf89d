"""Assistants as LangGraph Server's API reference has them, driven with langgraph-sdk against
keel on SQLite and on Postgres: create, get, patch (versions), set latest, delete, search,
count, schemas (the real state schema), subgraphs; per-assistant config and context; every
run records its assistant and version; another tenant's assistants are invisible."""

from __future__ import annotations

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_conformance import CONTEXT_TOY, STREAM_TOY, backend, live, world  # noqa: F401
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401

pytestmark = pytest.mark.slow


def _status(e: pytest.ExceptionInfo) -> int:
    return e.value.response.status_code


def test_create_patch_versions_latest_delete(live, world):
    _, keys, _ = world
    admin = get_sync_client(url=live, api_key=keys["admin"])
    a = admin.assistants.create(CONTEXT_TOY, name="greeter", context={"who": "ann"}, metadata={"team": "cx"},
                                config={"recursion_limit": 7, "tags": ["v1"]})
    aid = a["assistant_id"]
    assert a["graph_id"] == CONTEXT_TOY and a["version"] == 1 and a["name"] == "greeter"
    assert a["context"] == {"who": "ann"} and a["config"] == {"recursion_limit": 7, "tags": ["v1"]}
    assert admin.assistants.get(aid) == a

    b = admin.assistants.update(aid, context={"who": "bob", "greeting": "hey"}, metadata={"stage": "canary"})
    assert b["version"] == 2 and b["context"] == {"who": "bob", "greeting": "hey"}
    assert b["metadata"] == {"team": "cx", "stage": "canary"} and b["name"] == "greeter"
    versions = admin.assistants.get_versions(aid)
    assert [v["version"] for v in versions] == [2, 1]
    assert [v["version"] for v in admin.assistants.get_versions(aid, metadata={"stage": "canary"})] == [2]

    # runs use the current version's context and record the version
    req = get_sync_client(url=live, api_key=keys["req"])
    out = req.runs.wait(None, aid, input={})
    assert out["reply"] == "hey bob"
    run = req.runs.list(req.threads.search(limit=1, sort_by="created_at", sort_order="desc")[0]["thread_id"])[0]
    assert run["assistant_id"] == aid and run["assistant_version"] == 2
    assert req.runs.wait(None, aid, input={}, context={"who": "cy"})["reply"] == "hey cy"  # the run's own wins

    assert admin.assistants.set_latest(aid, 1)["version"] == 1
    assert req.runs.wait(None, aid, input={})["reply"] == "hello ann"
    with pytest.raises(httpx.HTTPStatusError) as e:
        admin.assistants.set_latest(aid, 9)
    assert _status(e) == 404

    assert aid in {x["assistant_id"] for x in req.assistants.search(graph_id=CONTEXT_TOY)}
    assert [x["assistant_id"] for x in req.assistants.search(metadata={"team": "cx"})] == [aid]
    assert req.assistants.count(graph_id=CONTEXT_TOY) == 2  # the default one and this one
    admin.assistants.delete(aid)
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.assistants.get(aid)
    assert _status(e) == 404
    assert req.assistants.count(graph_id=CONTEXT_TOY) == 1


def test_refusals_and_tenants(live, world):
    _, keys, _ = world
    admin = get_sync_client(url=live, api_key=keys["admin"])
    req = get_sync_client(url=live, api_key=keys["req"])
    mine = admin.assistants.create(STREAM_TOY, name="mine")
    before = req.assistants.count()
    with pytest.raises(httpx.HTTPStatusError) as e:
        req.assistants.create(STREAM_TOY)
    assert _status(e) == 403
    for kwargs, code, words in (({"graph_id": "nope"}, 422, "nope"),
                                ({"graph_id": "support", "context": {"tools": "mine"}}, 422, "keel's own"),
                                ({"graph_id": CONTEXT_TOY, "context": {"whom": "x"}}, 422, "Caller"),
                                ({"graph_id": STREAM_TOY, "config": {"recursion_limit": 0}}, 422, "recursion_limit"),
                                ({"graph_id": STREAM_TOY, "assistant_id": mine["assistant_id"]}, 409, "exists")):
        with pytest.raises(httpx.HTTPStatusError) as e:
            admin.assistants.create(**kwargs)
        assert _status(e) == code and words in e.value.response.text, (kwargs, e.value.response.text)
    assert admin.assistants.create(STREAM_TOY, assistant_id=mine["assistant_id"], if_exists="do_nothing") == mine
    with pytest.raises(httpx.HTTPStatusError) as e:
        admin.assistants.update("support", name="mine now")
    assert _status(e) == 409 and "default assistant" in e.value.response.text
    with pytest.raises(httpx.HTTPStatusError) as e:
        admin.assistants.update(mine["assistant_id"], context={"x": 1}, graph_id="support")
    assert _status(e) == 422
    assert req.assistants.count() == before and admin.assistants.get(mine["assistant_id"])["version"] == 1

    other = get_sync_client(url=live, api_key=keys["other_admin"])
    assert mine["assistant_id"] not in {x["assistant_id"] for x in other.assistants.search(limit=100)}
    for call in (lambda: other.assistants.get(mine["assistant_id"]),
                 lambda: other.assistants.update(mine["assistant_id"], name="x"),
                 lambda: other.assistants.delete(mine["assistant_id"]),
                 lambda: other.assistants.get_versions(mine["assistant_id"]),
                 lambda: other.runs.wait(None, mine["assistant_id"], input={})):
        with pytest.raises(httpx.HTTPStatusError) as e:
            call()
        assert _status(e) == 404
    assert admin.assistants.get(mine["assistant_id"])["name"] == "mine"


def test_schemas_graph_and_subgraphs(live, world):
    _, keys, _ = world
    req = get_sync_client(url=live, api_key=keys["req"])
    support = req.assistants.get_schemas("support")
    props = set(support["state_schema"]["properties"])
    assert {"plan", "approval", "status", "ticket"} <= props  # the whole state, not just the input
    assert set(support["input_schema"]["properties"]) < props
    assert support["context_schema"] is None  # keel builds the support graph's context; a client sends none
    toy = req.assistants.get_schemas(CONTEXT_TOY)
    assert set(toy["context_schema"]["properties"]) == {"who", "greeting"}
    subs = req.assistants.get_subgraphs(STREAM_TOY)
    assert list(subs) == ["child"] and set(subs["child"]["state_schema"]["properties"]) == {"topic", "note"}
    assert req.assistants.get_subgraphs("support") == {}
    drawn = req.assistants.get_graph(STREAM_TOY, xray=True)
    assert any("inner" in n["id"] for n in drawn["nodes"])
