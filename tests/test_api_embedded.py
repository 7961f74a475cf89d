"""The embedded default: `keel serve` with no database URL runs on SQLite with an
in-process worker and the demo fixtures, and tells the user how to get a key."""

from __future__ import annotations

import json

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_helpers import ROOT, free_port, keel_env, keel_key, spawn, stop, wait_ok

pytestmark = pytest.mark.slow


def test_embedded_serve_end_to_end(tmp_path):
    env = keel_env(KEEL_DATA_DIR=str(tmp_path / "data"))
    demo = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())["tenant"]
    ticket = next(t for t in map(json.loads, (ROOT / "keel" / "demo" / "tickets.jsonl").read_text().splitlines())
                  if t["id"] == "T-8")
    req = keel_key(env, demo, "requester", "alice")
    appr = keel_key(env, demo, "approver", "bob")
    assert req.startswith("keel_") and req != appr

    port = free_port()
    log = tmp_path / "serve.log"
    proc = spawn(env, "serve", "--port", str(port), log=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, proc=proc)
        out = log.read_text()
        assert "SQLite" in out and "keel keys create --tenant" in out

        # curl-style with a bearer token
        r = httpx.post(f"{url}/assistants/search", json={}, headers={"Authorization": f"Bearer {req}"})
        assert r.status_code == 200 and r.json()[0]["graph_id"] == "support"

        client = get_sync_client(url=url, api_key=req)
        tid = client.threads.create()["thread_id"]
        state = client.runs.wait(tid, "support", input={"ticket": ticket})
        intr = state["__interrupt__"][0]["value"]
        final = get_sync_client(url=url, api_key=appr).runs.wait(
            tid, "support", command={"resume": {"decision": "approve", "plan_hash": intr["plan_hash"], "reviewer": "bob",
                                                "reason": "ok"}})
        assert final["status"] == "completed"
        assert (tmp_path / "data" / "keel.db").exists()
    finally:
        stop(proc)
