"""The supply workflow's approvals go through the same approvals API as support's, over HTTP:
``GET /approvals`` lists supply plans next to support's, and a reviewer approves through
``POST /approvals/{thread}/approve`` or through ``command.resume`` on a run, under the
supply pack's ``[approvals]`` rules (an admin or the requester is refused)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from support.api_helpers import demo_tickets, load_demo

from engine.runtime import Runtime
from engine.supply import load_supply_fixtures, supply_parts
from keel.config import Settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SUPPLY_DIR = ROOT / "workflows" / "supply"
EVENTS = {e["id"]: e for e in map(json.loads, (SUPPLY_DIR / "events.jsonl").read_text().splitlines())}
TENANT = "tidewater"


@pytest.fixture
def api(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app

    rt = Runtime(Settings(data_dir=tmp_path, now=datetime(2027, 5, 12, 15, tzinfo=UTC), plan_signing_key="k" * 32))
    load_supply_fixtures(rt, SUPPLY_DIR / "fixtures.json")
    load_demo(rt, TENANT)
    keys = {role: {"x-api-key": rt.principals.create_key(TENANT, f"{role}-user", role)}
            for role in ("requester", "approver", "admin")}
    app = create_app(rt, embedded_worker=True, worker_kwargs={"poll_s": 0.05})
    try:
        with TestClient(app) as client:
            yield client, rt, keys
    finally:
        rt.close()


def start(client, keys, event_id: str) -> tuple[str, dict]:
    tid = client.post("/threads", json={}, headers=keys["requester"]).json()["thread_id"]
    r = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "supply", "input": {"event": EVENTS[event_id]}},
                    headers=keys["requester"])
    assert r.status_code == 200, r.text
    return tid, r.json()


def reroutes(rt: Runtime, shipment: str) -> list[dict]:
    return [r for r in supply_parts(rt).store.all(TENANT, "reroute") if r["shipment_id"] == shipment]


def test_supply_plans_are_listed_and_approved_through_the_approvals_api(api):
    client, rt, keys = api
    r = client.post("/tickets", json={"ticket": demo_tickets(TENANT)["T-21"], "wait": True}, headers=keys["requester"])
    assert r.status_code == 201, r.text
    support_tid = r.json()["thread_id"]
    tid_api, out = start(client, keys, "SC-02")
    tid_cmd, _ = start(client, keys, "SC-15")
    hash_api = out["__interrupt__"][0]["value"]["plan_hash"]

    listed = client.get("/approvals", headers=keys["approver"]).json()["items"]
    by_thread = {i["thread_id"]: i for i in listed}
    assert {support_tid, tid_api, tid_cmd} <= set(by_thread)
    detail = client.get(f"/approvals/{tid_api}", headers=keys["approver"]).json()
    assert detail["plan_hash"] == hash_api and detail["request"]["plan"][0]["tool"] == "reroute_shipment"
    assert detail["preview"][0]["tool"] == "reroute_shipment"

    # the supply pack lets only approvers decide, never the requester
    for who in ("admin", "requester"):
        r = client.post(f"/approvals/{tid_api}/approve", json={"plan_hash": hash_api, "wait": True}, headers=keys[who])
        assert r.status_code == 403, r.text
    assert not reroutes(rt, "SH-5002")

    r = client.post(f"/approvals/{tid_api}/approve", json={"plan_hash": hash_api, "wait": True}, headers=keys["approver"])
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "completed"
    assert len(reroutes(rt, "SH-5002")) == 1

    req = client.get(f"/approvals/{tid_cmd}", headers=keys["approver"]).json()
    r = client.post(f"/threads/{tid_cmd}/runs/wait", headers=keys["approver"], json={
        "assistant_id": "supply",
        "command": {"resume": {"decision": "approve", "plan_hash": req["plan_hash"], "reason": "reship it"}}})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and len(reroutes(rt, "SH-5015")) == 1
    left = {i["thread_id"] for i in client.get("/approvals", headers=keys["approver"]).json()["items"]}
    assert support_tid in left and not {tid_api, tid_cmd} & left
