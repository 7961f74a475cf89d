"""Crons as LangGraph Server's API reference has them, driven with langgraph-sdk against keel
on SQLite and on Postgres: create (stateless and on a thread), search, count, delete;
fired by the workers exactly once per tick; one tenant never sees another's."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_conformance import REPLY, STREAM_TOY, backend, live, world  # noqa: F401
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401

pytestmark = pytest.mark.slow

TOPIC = {"topic": "cron"}


def _make_due(rt, cron_id: str) -> float:
    """Move a cron's next tick to just now (a test cannot wait for a minute to pass)."""
    tick = round(time.time() - 1, 3)
    rt.db.execute("UPDATE api_crons SET next_run_at = ? WHERE cron_id = ?", (tick, cron_id))
    return tick


def _wait(pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_create_search_count_delete(live, world):
    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    end = datetime.now(UTC) + timedelta(days=1)
    on_thread = client.crons.create_for_thread(tid, STREAM_TOY, schedule="*/5 * * * *", input=TOPIC,
                                               metadata={"team": "ops"}, end_time=end)
    stateless = client.crons.create(STREAM_TOY, schedule="0 9 * * 1", input=TOPIC, timezone="Europe/Paris")
    assert on_thread["thread_id"] == tid and on_thread["schedule"] == "*/5 * * * *"
    assert on_thread["metadata"] == {"team": "ops"} and on_thread["enabled"] is True
    assert on_thread["payload"]["input"] == TOPIC and on_thread["user_id"] == "rita"
    nxt = datetime.fromisoformat(on_thread["next_run_date"])
    assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(minutes=5)
    assert datetime.fromisoformat(on_thread["end_time"]) == end.replace(microsecond=end.microsecond)
    paris = datetime.fromisoformat(stateless["next_run_date"]).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (paris.hour, paris.minute, paris.weekday()) == (9, 0, 0) and stateless["thread_id"] is None

    assert {c["cron_id"] for c in client.crons.search()} == {on_thread["cron_id"], stateless["cron_id"]}
    assert [c["cron_id"] for c in client.crons.search(thread_id=tid)] == [on_thread["cron_id"]]
    assert len(client.crons.search(assistant_id=STREAM_TOY, limit=1)) == 1
    assert len(client.crons.search(limit=1, offset=1)) == 1
    assert [c["cron_id"] for c in client.crons.search(metadata={"team": "ops"})] == [on_thread["cron_id"]]
    assert client.crons.count() == 2 and client.crons.count(thread_id=tid) == 1
    assert client.crons.search(select=["cron_id"])[0].keys() == {"cron_id"}

    client.crons.delete(stateless["cron_id"])
    assert client.crons.count() == 1
    client.threads.delete(tid)  # a thread's crons go with it
    assert client.crons.count() == 0


def test_workers_fire_each_tick_once(live, world, backend):
    _, rt = backend
    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    cron = client.crons.create_for_thread(tid, STREAM_TOY, schedule="* * * * *", input=TOPIC)
    _make_due(rt, cron["cron_id"])
    runs = _wait(lambda: [r for r in client.runs.list(tid) if r["status"] == "success"])
    assert len(runs) == 1 and runs[0]["metadata"]["cron_id"] == cron["cron_id"]
    assert client.threads.get_state(tid)["values"]["reply"] == REPLY
    moved = client.crons.search(thread_id=tid)[0]
    assert datetime.fromisoformat(moved["next_run_date"]) > datetime.now(UTC)

    # stateless: each tick on a new thread of the tenant
    sl = client.crons.create(STREAM_TOY, schedule="* * * * *", input=TOPIC)
    _make_due(rt, sl["cron_id"])
    # the tick's thread is idle from its creation until a worker claims its run: wait for the values too
    made = _wait(lambda: [t for t in client.threads.search(metadata={"cron_id": sl["cron_id"]})
                          if t["status"] == "idle" and (t.get("values") or {}).get("reply")])
    assert len(made) == 1 and made[0]["values"]["reply"] == REPLY


def test_a_tick_fires_once_however_many_workers_race(live, world, backend):
    """Eight workers (and the app's own) see the same due tick: one run is queued."""
    from engine.crons import CronStore
    from engine.queue import RunQueue

    _, rt = backend
    _, keys, _ = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    # a yearly schedule: the forced tick is the only one due during the test (an every-minute
    # schedule fired a second, legitimate tick when the test ran across a minute boundary)
    cron = client.crons.create_for_thread(tid, STREAM_TOY, schedule="0 0 1 1 *", input=TOPIC)
    tick = _make_due(rt, cron["cron_id"])
    fired: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        store, queue = CronStore(rt.db), RunQueue(rt.db)
        barrier.wait()
        fired.append(store.fire_due(queue, now=tick + 0.5))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(fired) <= 1
    _wait(lambda: all(r["status"] == "success" for r in client.runs.list(tid)) and client.runs.list(tid))
    time.sleep(1.2)  # the embedded workers' next cron pass
    assert len(client.runs.list(tid)) == 1


def test_bad_input_and_other_tenants(live, world, backend):
    _, rt = backend
    _, keys, tickets = world
    client = get_sync_client(url=live, api_key=keys["req"])
    tid = client.threads.create()["thread_id"]
    mine = client.crons.create_for_thread(tid, STREAM_TOY, schedule="0 * * * *", input=TOPIC)
    h = {"x-api-key": keys["req"]}
    bad = [({"schedule": "every minute"}, "schedule"), ({"schedule": "61 * * * *"}, "schedule"),
           ({"timezone": "Mars/Base"}, "time zone"), ({"webhook": "http://x"}, "webhook"),
           ({"end_time": "2001-01-01T00:00:00+00:00"}, "past"), ({"assistant_id": "nope"}, "nope"),
           ({"assistant_id": "support", "input": {"ticket": {"id": "T-x"}}}, "ticket"),
           ({"assistant_id": "support", "input": {"ticket": tickets["T-1"]}, "context": {"x": 1}}, "context")]
    with httpx.Client(base_url=live, headers=h, timeout=30) as http:
        for patch, words in bad:
            body = {"assistant_id": STREAM_TOY, "schedule": "* * * * *", "input": TOPIC, **patch}
            r = http.post("/runs/crons", json=body)
            assert 400 <= r.status_code < 500 and words in r.text, (patch, r.status_code, r.text)
        assert http.delete("/runs/crons/not-a-uuid").status_code == 404
    assert client.crons.count() == 1

    other = get_sync_client(url=live, api_key=keys["other_req"])
    assert other.crons.search() == [] and other.crons.count() == 0
    for call in (lambda: other.crons.delete(mine["cron_id"]),
                 lambda: other.crons.create_for_thread(tid, STREAM_TOY, schedule="* * * * *", input=TOPIC)):
        with pytest.raises(httpx.HTTPStatusError) as e:
            call()
        assert e.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as e:
        get_sync_client(url=live, api_key=keys["appr"]).crons.create(STREAM_TOY, schedule="* * * * *", input=TOPIC)
    assert e.value.response.status_code == 403
    assert client.crons.count() == 1 and client.crons.search()[0]["cron_id"] == mine["cron_id"]
