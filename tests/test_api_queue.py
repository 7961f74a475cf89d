"""Durable runs in-process on the real Postgres: retries with backoff, dead letters, cancel,
enqueue, and a dead worker's expired lease (toy graphs, so failures are deterministic)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401
from support.api_helpers import new_tenant
from support.api_toy import register

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def client(api_runtime):
    from api.app import create_app

    register()
    app = create_app(api_runtime, embedded_worker=True, worker_concurrency=2,
                     worker_kwargs={"backoff_base": 0.05, "backoff_cap": 0.2, "lease_s": 3.0, "poll_s": 0.05})
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def keys(api_runtime):
    t = new_tenant()
    return {
        "tenant": t,
        "req": {"x-api-key": api_runtime.principals.create_key(t, "rita", "requester")},
        "admin": {"x-api-key": api_runtime.principals.create_key(t, "ada", "admin")},
        "appr": {"x-api-key": api_runtime.principals.create_key(t, "alex", "approver")},
        "other_admin": {"x-api-key": api_runtime.principals.create_key(new_tenant(), "zed", "admin")},
    }


def _thread(client, h) -> str:
    r = client.post("/threads", json={}, headers=h)
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


def _wait_status(client, h, tid, rid, statuses, timeout=20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/threads/{tid}/runs/{rid}", headers=h).json()
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run stuck in {run['status']}")


def test_transient_failure_retries_then_succeeds(client, keys):
    h = keys["req"]
    tid = _thread(client, h)
    r = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "toy_flaky", "input": {"fail_times": 2}}, headers=h)
    assert r.status_code == 200 and r.json()["done"] is True
    run = client.get(f"/threads/{tid}/runs", headers=h).json()[0]
    assert run["status"] == "success" and run["retries"] == 2 and run["attempts"] == 3


def test_exhausted_retries_dead_letter_and_admin_retry(client, keys):
    h, admin = keys["req"], keys["admin"]
    tid = _thread(client, h)
    out = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "toy_flaky", "input": {"fail_times": 3}},
                      headers=h).json()
    assert out["__error__"]["status"] == "dead"
    run = client.get(f"/threads/{tid}/runs", headers=h).json()[0]
    assert run["status"] == "dead" and run["retries"] == 3 and "TimeoutError" in run["error"]
    assert client.get(f"/threads/{tid}", headers=h).json()["status"] == "error"

    assert client.get("/dead-letters", headers=h).status_code == 403
    dead = client.get("/dead-letters", headers=admin).json()["items"]
    assert [d["run_id"] for d in dead] == [run["run_id"]]
    assert client.get("/dead-letters", headers=keys["other_admin"]).json()["items"] == []
    assert client.post(f"/dead-letters/{run['run_id']}/retry", headers=keys["other_admin"]).status_code == 404
    assert client.post(f"/dead-letters/{run['run_id']}/retry", headers=keys["appr"]).status_code == 403
    r = client.post(f"/dead-letters/{run['run_id']}/retry", headers=admin)
    assert r.status_code == 200 and r.json()["status"] in ("pending", "running", "success")
    done = _wait_status(client, h, tid, run["run_id"], ("success", "dead", "error"))
    assert done["status"] == "success"
    assert client.post(f"/dead-letters/{run['run_id']}/retry", headers=admin).status_code == 409
    audit = client.get(f"/threads/{tid}/audit", headers=admin).json()["items"]
    assert any(a["data"].get("event") == "dead_letter_retried" for a in audit)


def test_permanent_error_is_not_retried(client, keys):
    h = keys["req"]
    tid = _thread(client, h)
    out = client.post(f"/threads/{tid}/runs/wait", json={"assistant_id": "toy_broken", "input": {}}, headers=h).json()
    assert out["__error__"]["error"] == "ValueError"
    run = client.get(f"/threads/{tid}/runs", headers=h).json()[0]
    assert run["status"] == "error" and run["attempts"] == 1 and run["retries"] == 0


def test_cancel_and_multitask(client, keys):
    h = keys["req"]
    tid = _thread(client, h)
    run = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": {"sleep": 1.5}}, headers=h).json()
    busy = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": {}}, headers=h)
    assert busy.status_code == 409
    queued = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": {},
                                                       "multitask_strategy": "enqueue"}, headers=h)
    assert queued.status_code == 200
    r = client.post(f"/threads/{tid}/runs/{run['run_id']}/cancel?wait=1", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "interrupted"
    q = _wait_status(client, h, tid, queued.json()["run_id"], ("success", "error"))
    assert q["status"] == "success"
    statuses = {x["run_id"]: x["status"] for x in client.get(f"/threads/{tid}/runs", headers=h).json()}
    assert statuses == {run["run_id"]: "interrupted", q["run_id"]: "success"}


def test_expired_lease_is_taken_over_and_resumed(client, keys, api_runtime):
    """A "worker" claims a run and dies (never heartbeats): once its lease expires a live
    worker claims it and runs it from the thread's last checkpoint."""
    from engine.queue import RunQueue

    h = keys["req"]
    tid = _thread(client, h)
    q = RunQueue(api_runtime.db)
    run = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": {"sleep": 0},
                                                    "after_seconds": 0.3}, headers=h).json()
    # the ghost wins the claim (the embedded workers only see the run once it is due)
    deadline = time.monotonic() + 5
    claimed = None
    while claimed is None and time.monotonic() < deadline:
        time.sleep(0.3)
        c = q.claim("ghost-worker", lease_s=1.0)
        if c is not None and c["run_id"] == run["run_id"]:
            claimed = c
    if claimed is None:
        pytest.skip("an embedded worker claimed the run first")
    done = _wait_status(client, h, tid, run["run_id"], ("success", "error"))
    assert done["status"] == "success" and done["attempts"] == 2


def test_sse_stream_of_toy(client, keys):
    h = keys["req"]
    tid = _thread(client, h)
    with client.stream("POST", f"/threads/{tid}/runs/stream", headers=h,
                       json={"assistant_id": "toy_slow", "input": {}, "stream_mode": ["updates", "values"]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
    assert events[0] == "metadata" and events.count("updates") == 3 and "values" in events
    runs = client.get(f"/threads/{tid}/runs", headers=h).json()
    with client.stream("GET", f"/threads/{tid}/runs/{runs[0]['run_id']}/stream", headers=h) as r:
        again = "".join(r.iter_text())
    assert again.count("event: updates") == 3


def test_backoff_is_exponential_with_jitter():
    import random

    from engine.queue import backoff_delay

    rnd = random.Random(7)
    for retry, exp in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        ds = [backoff_delay(retry, 1.0, 30.0, rnd) for _ in range(200)]
        assert all(exp / 2 <= d <= exp for d in ds)
        assert max(ds) - min(ds) > exp / 4  # jittered, not constant


def test_checkpoint_writes_of_a_run_commit_only_under_its_lease(client, keys, api_runtime):
    """The lease fence on the checkpointer: the lease owner's checkpoint and pending writes
    commit; a worker that lost the lease gets ``LeaseLost`` and nothing it sent is stored."""
    from langgraph.checkpoint.base import empty_checkpoint

    from engine.checkpoints import LeaseLost

    h = keys["req"]
    tid = _thread(client, h)
    run = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_slow", "input": {"sleep": 0},
                                                    "after_seconds": 600}, headers=h).json()
    rid = run["run_id"]
    with api_runtime.db.transaction() as tx:  # as if worker w-1 had claimed it
        tx.execute("UPDATE api_runs SET status = 'running', lease_owner = 'w-1', lease_expires_at = ? WHERE run_id = ?",
                   (time.time() + 600, rid))
    saver = api_runtime.checkpointer

    def rows() -> tuple[int, int]:
        with api_runtime.db.transaction() as tx:
            return (tx.fetchone("SELECT COUNT(*) AS n FROM checkpoints WHERE thread_id = ?", (tid,))["n"],
                    tx.fetchone("SELECT COUNT(*) AS n FROM checkpoint_writes WHERE thread_id = ?", (tid,))["n"])

    def config(owner: str) -> dict:
        return {"configurable": {"thread_id": tid, "checkpoint_ns": ""}, "metadata": {"run_id": rid, "lease_owner": owner}}

    try:
        cfg = saver.put(config("w-1"), empty_checkpoint(), {"source": "input", "step": -1}, {})
        saver.put_writes({**cfg, "metadata": config("w-1")["metadata"]}, [("x", 1)], "task-1")
        assert rows() == (1, 1)
        with pytest.raises(LeaseLost):
            saver.put(config("w-2"), empty_checkpoint(), {"source": "loop", "step": 0}, {})
        with pytest.raises(LeaseLost):
            saver.put_writes({**cfg, "metadata": config("w-2")["metadata"]}, [("y", 2)], "task-2")
        assert rows() == (1, 1)
        with api_runtime.db.transaction() as tx:  # the lease expired and another worker holds it
            tx.execute("UPDATE api_runs SET lease_owner = 'w-2' WHERE run_id = ?", (rid,))
        with pytest.raises(LeaseLost):
            saver.put(config("w-1"), empty_checkpoint(), {"source": "loop", "step": 0}, {})
        assert rows() == (1, 1)
    finally:
        with api_runtime.db.transaction() as tx:
            tx.execute("UPDATE api_runs SET status = 'success', lease_owner = NULL WHERE run_id = ?", (rid,))


def test_setup_next_to_live_writes_takes_no_table_lock(api_runtime):
    """A process starting (a worker replacing a dead one) runs the schema set-up while
    other transactions write: once the schema is there, set-up must not wait for them
    (``CREATE INDEX IF NOT EXISTS`` would take a SHARE lock first and, waiting, deadlock
    with writers that then touch a table it already locked)."""
    import threading

    import psycopg

    from engine.queue import RunQueue
    from guards.dlp import redact
    from keel.audit import AuditLog

    RunQueue(api_runtime.db).setup()
    url = api_runtime.db.url
    with psycopg.connect(url) as writer:  # an open write transaction on api_runs and audit_log
        writer.execute("UPDATE api_runs SET updated_at = updated_at WHERE run_id = 'none'")
        writer.execute("LOCK TABLE api_runs, audit_log IN ROW EXCLUSIVE MODE")
        done = threading.Event()

        def setup() -> None:
            RunQueue(api_runtime.db).setup()
            AuditLog(api_runtime.db, redact=redact).setup()
            done.set()

        t = threading.Thread(target=setup, daemon=True)
        t.start()
        assert done.wait(10), "schema set-up waited for a writer's transaction"
        writer.rollback()
    t.join(10)
