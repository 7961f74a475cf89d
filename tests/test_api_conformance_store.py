"""LangGraph's store API, driven with langgraph-sdk against keel on SQLite and on Postgres:
put, get, delete, search (filter, offset, limit), namespaces, TTL; one tree per tenant,
and the same items nodes reach as ``runtime.store``."""

from __future__ import annotations

import time

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_conformance import CONTEXT_TOY, backend, live, world  # noqa: F401
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401

pytestmark = pytest.mark.slow


def test_put_get_search_namespaces_delete(live, world):
    _, keys, _ = world
    store = get_sync_client(url=live, api_key=keys["req"]).store
    store.put_item(["docs", "u1"], "a", {"kind": "note", "n": 1})
    store.put_item(["docs", "u1"], "b", {"kind": "note", "n": 2})
    store.put_item(["docs", "u2"], "c", {"kind": "memo", "n": 3})
    store.put_item(["prefs"], "theme", {"dark": True})

    item = store.get_item(["docs", "u1"], "a")
    assert item["namespace"] == ["docs", "u1"] and item["key"] == "a" and item["value"] == {"kind": "note", "n": 1}
    assert item["created_at"] and item["updated_at"]
    assert store.get_item(["docs", "u1"], "zzz") is None

    found = store.search_items(["docs"], filter={"kind": "note"}, limit=10)["items"]
    assert sorted(i["key"] for i in found) == ["a", "b"]
    assert len(store.search_items(["docs"], limit=2)["items"]) == 2
    assert len(store.search_items(["docs"], limit=2, offset=2)["items"]) == 1
    assert [i["key"] for i in store.search_items(["docs"], filter={"n": {"$gt": 2}})["items"]] == ["c"]

    spaces = store.list_namespaces()["namespaces"]
    assert sorted(spaces) == [["docs", "u1"], ["docs", "u2"], ["prefs"]]
    assert store.list_namespaces(prefix=["docs"], max_depth=1)["namespaces"] == [["docs"]]
    assert sorted(store.list_namespaces(suffix=["u2"])["namespaces"]) == [["docs", "u2"]]

    store.put_item(["docs", "u1"], "a", {"kind": "note", "n": 10})
    assert store.get_item(["docs", "u1"], "a")["value"]["n"] == 10
    store.delete_item(["docs", "u1"], "a")
    assert store.get_item(["docs", "u1"], "a") is None


def test_tenants_are_isolated_and_roles_apply(live, world):
    _, keys, _ = world
    mine = get_sync_client(url=live, api_key=keys["req"]).store
    theirs = get_sync_client(url=live, api_key=keys["other_req"]).store
    mine.put_item(["secrets"], "k", {"v": "mine"})
    assert theirs.get_item(["secrets"], "k") is None
    assert theirs.search_items([])["items"] == []
    assert theirs.list_namespaces()["namespaces"] == []
    theirs.put_item(["secrets"], "k", {"v": "theirs"})  # their own tree, same names
    theirs.delete_item(["secrets"], "k")
    assert mine.get_item(["secrets"], "k")["value"] == {"v": "mine"}

    approver = get_sync_client(url=live, api_key=keys["appr"]).store
    assert approver.get_item(["secrets"], "k")["value"] == {"v": "mine"}  # reads
    with pytest.raises(httpx.HTTPStatusError) as e:
        approver.put_item(["secrets"], "k", {"v": "approver"})
    assert e.value.response.status_code == 403
    assert mine.get_item(["secrets"], "k")["value"] == {"v": "mine"}


def test_bad_requests_are_4xx_and_change_nothing(live, world):
    _, keys, _ = world
    h = {"x-api-key": keys["req"]}
    with httpx.Client(base_url=live, headers=h, timeout=30) as http:
        bad_puts = [{"namespace": [], "key": "k", "value": {}}, {"namespace": ["a.b"], "key": "k", "value": {}},
                    {"namespace": ["a"], "key": "", "value": {}}, {"namespace": ["a"], "key": "k", "value": [1]},
                    {"namespace": ["a"], "key": "k", "value": {}, "ttl": -1}, {"namespace": ["a"], "key": "k"}]
        for body in bad_puts:
            r = http.put("/store/items", json=body)
            assert r.status_code == 422 and r.json()["detail"], (body, r.text)
        for params in ({"namespace": "", "key": "k"}, {"namespace": "a..b", "key": "k"}, {"namespace": "a"}):
            assert http.get("/store/items", params=params).status_code == 422, params
        r = http.post("/store/items/search", json={"namespace_prefix": ["a"], "filter": {"n": {"$regex": "x"}}})
        assert r.status_code == 422 and "$regex" in r.text, r.text
        assert http.post("/store/items/search", json={"limit": 0}).status_code == 422
        assert http.post("/store/namespaces", json={}).json() == {"namespaces": []}


def test_ttl_expires_items(live, world):
    _, keys, _ = world
    store = get_sync_client(url=live, api_key=keys["req"]).store
    store.put_item(["tmp"], "short", {"v": 1}, ttl=0.01)  # minutes: 0.6 s
    store.put_item(["tmp"], "long", {"v": 2}, ttl=60)
    assert store.get_item(["tmp"], "short", refresh_ttl=False)["value"] == {"v": 1}
    time.sleep(1.6)
    assert store.get_item(["tmp"], "short") is None
    assert store.get_item(["tmp"], "long")["value"] == {"v": 2}
    assert [i["key"] for i in store.search_items(["tmp"])["items"]] == ["long"]


def test_nodes_reach_the_same_store_as_the_run_tenant(live, world):
    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    for _ in range(2):
        client.runs.wait(None, CONTEXT_TOY, input={}, context={"who": "ann"})
    assert client.store.get_item(["greetings"], "ann")["value"] == {"visits": 2, "greeting": "hello"}
    other = get_sync_client(url=live, api_key=keys["other_req"])
    assert other.store.get_item(["greetings"], "ann") is None
    other.runs.wait(None, CONTEXT_TOY, input={}, context={"who": "ann"})
    assert other.store.get_item(["greetings"], "ann")["value"]["visits"] == 1
    assert client.store.get_item(["greetings"], "ann")["value"]["visits"] == 2
