"""Runs whose lease keeps expiring (they crash every worker they land on) are dead-lettered.

Unit level, on SQLite (the embedded worker leases the same way) and Postgres: expired
leases are simulated by moving ``lease_expires_at`` into the past, so each test takes
milliseconds. One slow test kills real ``keel worker`` processes with a node that SIGKILLs
its own worker. Every Postgres test works in a database of its own: no other test's worker
may claim these runs, and the ghost claims here must not lease anybody else's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from conftest import _own_database
from support.api_toy import register as register_toys
from support.crash_toy import register as register_crash

N = 3
"""``KEEL_WORKER_MAX_LEASE_EXPIRIES`` in these tests (the default)."""


@pytest.fixture(scope="module")
def lease_pg_url() -> Iterator[str]:
    yield from _own_database("keel_tle")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def runtime(request, tmp_path) -> Iterator[Any]:
    from keel.config import Settings
    from engine.runtime import Runtime

    register_toys()
    register_crash()
    url = request.getfixturevalue("lease_pg_url") if request.param == "postgres" else None
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path, plan_signing_key="lease-test-key",
                          worker_max_lease_expiries=N))
    yield rt
    rt.close()


@pytest.fixture()
def queue(runtime) -> Any:
    from engine.queue import RunQueue

    return RunQueue(runtime.db).setup()


def _new_run(q: Any, graph: str = "toy_flaky", inp: dict | None = None) -> tuple[str, str, str]:
    from engine.queue import new_id

    tenant = "t" + new_id().replace("-", "")[:10]
    th, _ = q.create_thread(tenant, "rita")
    run = q.create_run(tenant, th["thread_id"], assistant_id=graph, graph_id=graph, kind="input",
                       payload={"input": inp if inp is not None else {"fail_times": 0}}, created_by="rita",
                       correlation_id="cid-" + tenant)
    return tenant, th["thread_id"], run["run_id"]


def _expire(q: Any, run_id: str) -> None:
    """The run's worker "died": its lease ran out a second ago."""
    with q.db.transaction() as tx:
        assert tx.execute("UPDATE api_runs SET lease_expires_at = ? WHERE run_id = ? AND status = 'running'",
                          (time.time() - 1, run_id)) == 1


def test_run_is_dead_lettered_after_n_expired_leases(queue):
    q = queue
    tenant, tid, rid = _new_run(q)
    for i in range(N):
        c = q.claim_next(f"worker-{i}", 30.0, max_lease_expiries=N)
        assert c.run is not None and c.run["run_id"] == rid and c.dead_lettered == ()
        assert (c.run["attempts"], c.run["lease_expiries"]) == (i + 1, i)
        _expire(q, rid)
    c = q.claim_next("worker-last", 30.0, max_lease_expiries=N)
    assert c.run is None
    assert [d["run_id"] for d in c.dead_lettered] == [rid]
    run = q.get_run(tenant, tid, rid)
    assert run["status"] == "dead" and run["dead_reason"] == "lease_expired_repeatedly"
    assert (run["attempts"], run["lease_expiries"], run["lease_owner"]) == (N, N, None)
    assert run["error"].startswith("lease_expired_repeatedly: the run's lease expired 3 times (limit 3)")
    assert "worker-2" in run["error"]  # the last worker that took it down
    assert q.get_thread(tenant, tid)["status"] == "error"
    assert [d["run_id"] for d in q.list_dead(tenant)] == [rid]
    # nothing claims it again
    assert q.claim_next("worker-after", 30.0, max_lease_expiries=N) == type(c)(None, ())


def test_expiries_are_counted_only_for_taken_over_leases(queue):
    """Transient-failure retries and first claims are not lease expiries; expiries below the
    limit are taken over as before; without a limit they are counted but never dead-letter."""
    q = queue
    tenant, tid, rid = _new_run(q)
    run = q.claim("w-1", 30.0, max_lease_expiries=N)
    assert q.retry_later(run, "w-1", "TimeoutError: slow", base=0.0, cap=0.0) == "pending"
    run = q.claim("w-2", 30.0, max_lease_expiries=N)
    assert (run["run_id"], run["attempts"], run["lease_expiries"]) == (rid, 2, 0)
    _expire(q, rid)
    run = q.claim("w-3", 30.0, max_lease_expiries=N)
    assert (run["attempts"], run["lease_expiries"]) == (3, 1)
    for i in range(N + 2):  # a caller without a limit (an old worker) only counts
        _expire(q, rid)
        run = q.claim(f"w-x{i}", 30.0)
        assert run["run_id"] == rid
    assert run["lease_expiries"] == N + 3 and run["status"] == "running"
    _expire(q, rid)  # the next limited claim dead-letters it at once
    assert [d["run_id"] for d in q.claim_next("w-y", 30.0, max_lease_expiries=N).dead_lettered] == [rid]


def test_a_dead_letter_does_not_block_the_threads_next_run(queue):
    q = queue
    tenant, tid, rid = _new_run(q)
    nxt = q.create_run(tenant, tid, assistant_id="toy_flaky", graph_id="toy_flaky", kind="input",
                       payload={"input": {}}, created_by="rita", correlation_id="c2", multitask_strategy="enqueue")
    for i in range(N):
        assert q.claim(f"w-{i}", 30.0, max_lease_expiries=N)["run_id"] == rid
        _expire(q, rid)
    c = q.claim_next("w-n", 30.0, max_lease_expiries=N)
    assert [d["run_id"] for d in c.dead_lettered] == [rid]
    assert c.run is not None and c.run["run_id"] == nxt["run_id"]  # in the same claim
    assert q.finish(c.run, "w-n", "success", "idle")
    assert q.get_thread(tenant, tid)["status"] == "idle"  # the run after the dead one succeeded


def test_dead_letter_reason_and_audit_via_the_api_and_retry_runs_it_again(runtime):
    """The embedded worker's path: ``Worker`` takes its limit from the settings, audits the
    dead-lettering, and the API shows reason and audit row; an admin's retry resets the
    count and the run then completes."""
    from api.app import create_app
    from engine.worker import Worker

    app = create_app(runtime, embedded_worker=False)
    with TestClient(app) as client:
        q = app.state.keel.queue
        tenant = "t" + str(time.time_ns())[-10:]
        req = {"x-api-key": runtime.principals.create_key(tenant, "rita", "requester")}
        admin = {"x-api-key": runtime.principals.create_key(tenant, "ada", "admin")}
        tid = client.post("/threads", json={}, headers=req).json()["thread_id"]
        r = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_flaky", "input": {"fail_times": 0}},
                        headers=req)
        assert r.status_code == 200, r.text
        rid = r.json()["run_id"]
        for i in range(N):  # workers that die on it, one after the other
            assert q.claim(f"doomed-{i}", 30.0)["run_id"] == rid
            _expire(q, rid)
        w = Worker(runtime, q, lease_s=30.0)
        assert w.max_lease_expiries == N
        assert w.run_one() is True  # its claim dead-letters the run (and executes nothing)

        run = client.get(f"/threads/{tid}/runs/{rid}", headers=req).json()
        assert run["status"] == "dead" and run["dead_reason"] == "lease_expired_repeatedly"
        assert run["lease_expiries"] == N and run["attempts"] == N
        dead = client.get("/dead-letters", headers=admin).json()["items"]
        assert [(d["run_id"], d["dead_reason"]) for d in dead] == [(rid, "lease_expired_repeatedly")]
        assert "lease expired 3 times" in dead[0]["error"]
        audit = client.get(f"/threads/{tid}/audit", headers=admin).json()["items"]
        rows = [a for a in audit if a["data"].get("event") == "dead_lettered"]
        assert len(rows) == 1 and rows[0]["kind"] == "run_finished" and rows[0]["actor"] == "system"
        assert rows[0]["data"]["reason"] == "lease_expired_repeatedly" and rows[0]["data"]["run_id"] == rid
        assert rows[0]["data"]["lease_expiries"] == N
        assert client.get(f"/threads/{tid}", headers=req).json()["status"] == "error"

        r = client.post(f"/dead-letters/{rid}/retry", headers=admin)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["lease_expiries"], r.json()["dead_reason"]) == ("pending", 0, None)
        assert w.run_one() is True
        run = client.get(f"/threads/{tid}/runs/{rid}", headers=req).json()
        assert (run["status"], run["attempts"], run["lease_expiries"]) == ("success", N + 1, 0)


def test_retried_dead_letter_gets_a_fresh_expiry_budget_and_completes(runtime, queue):
    from engine.worker import Worker

    q = queue
    tenant, tid, rid = _new_run(q)
    for i in range(N):
        q.claim(f"doomed-{i}", 30.0)
        _expire(q, rid)
    w = Worker(runtime, q, lease_s=30.0)
    assert w.run_one() is True and q.get_run(tenant, tid, rid)["status"] == "dead"
    q.retry_dead(tenant, rid)
    # a fresh budget: one more expiry is taken over, not dead-lettered
    assert q.claim("doomed-again", 30.0, max_lease_expiries=N)["lease_expiries"] == 0
    _expire(q, rid)
    assert w.run_one() is True
    run = q.get_run(tenant, tid, rid)
    assert (run["status"], run["lease_expiries"], run["attempts"], run["dead_reason"]) == ("success", 1, N + 2, None)


def test_transient_failures_exhausted_are_dead_lettered_with_their_reason_and_audited(runtime, queue):
    from engine.worker import Worker

    q = queue
    tenant, tid, rid = _new_run(q, inp={"fail_times": 5})
    w = Worker(runtime, q, lease_s=30.0, backoff_base=0.0, backoff_cap=0.0)
    for _ in range(3):  # max_retries 2: the third transient failure dead-letters
        assert w.run_one() is True
    run = q.get_run(tenant, tid, rid)
    assert (run["status"], run["dead_reason"], run["retries"]) == ("dead", "retries_exhausted", 3)
    rows = [a.data for a in runtime.audit.list(tenant, thread_id=tid) if a.data.get("event") == "dead_lettered"]
    assert [(d["reason"], d["run_id"]) for d in rows] == [("retries_exhausted", rid)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request, tmp_path) -> Iterator[str]:
    """A database with nothing in it yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
    else:
        yield from _own_database("keel_tlm")


def test_columns_are_added_to_a_database_made_by_the_previous_schema(empty_url):
    """A database whose ``api_runs`` predates the columns gets them on set-up (its existing
    rows read 0 expiries); on Postgres the migration is one more script recorded in
    ``keel_schema``, so later starts skip it without waiting for any lock on the table."""
    import engine.queue.schema as queue_mod
    from engine.queue import RunQueue
    from keel.db import Database

    db = Database(empty_url)
    try:
        # the schema as the previous keel's set-up left it
        db.executescript((f"SELECT pg_advisory_xact_lock({queue_mod.SCHEMA_LOCK});" if db.is_postgres else "")
                         + queue_mod._DDL)
        db.execute("INSERT INTO api_threads (thread_id, tenant, created_by, status, metadata, created_at, updated_at)"
                   " VALUES ('th', 't', 'u', 'busy', '{}', 'x', 'x')")
        db.execute("INSERT INTO api_runs (run_id, thread_id, tenant, assistant_id, graph_id, status, kind, payload,"
                   " stream_mode, metadata, multitask_strategy, correlation_id, created_by, available_at, lease_owner,"
                   " lease_expires_at, created_at, updated_at) VALUES ('old', 'th', 't', 'a', 'g', 'running', 'input',"
                   " '{}', '[]', '{}', 'reject', 'c', 'u', 0, 'gone', 0, 'x', 'x')")
        q = RunQueue(db).setup()
        assert (q.get_run_any("old")["lease_expiries"], q.get_run_any("old")["dead_reason"]) == (0, None)
        RunQueue(db).setup()  # idempotent
        assert q.claim("w", 30.0, max_lease_expiries=N)["lease_expiries"] == 1  # its lease had expired
        if db.is_postgres:
            with psycopg.connect(empty_url) as c:
                # the old script and the migration (and the scripts of tables set up beside the queue)
                assert c.execute("SELECT COUNT(*) FROM keel_schema").fetchone()[0] >= 2
                c.execute("LOCK TABLE api_runs IN ACCESS EXCLUSIVE MODE")  # live traffic holding the table
                other = Database(empty_url + ("&" if "?" in empty_url else "?") + "options=-c%20lock_timeout%3D2000")
                try:
                    RunQueue(other).setup()  # would fail after 2 s if it touched api_runs
                finally:
                    other.close()
    finally:
        db.close()


# -- real kills ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_that_kills_every_worker_is_dead_lettered_and_an_admin_retry_completes_it(lease_pg_url, tmp_path):
    """``keel worker`` processes really die (the node SIGKILLs its own process); the test
    starts a replacement after each death, as a supervisor would. After N expiries the
    next worker dead-letters the run instead of dying on it; once the cause is gone, an
    admin's retry runs it to success on that worker."""
    from api.app import create_app
    from keel.config import Settings
    from engine.runtime import Runtime
    from support.api_helpers import ROOT, keel_env, stop
    from support.faults_cluster import Zygote

    register_toys()
    register_crash()
    crash = tmp_path / "crash"
    crash.mkdir()
    rt = Runtime(Settings(database_url=lease_pg_url, data_dir=tmp_path, plan_signing_key="lease-test-key"))
    env = keel_env(KEEL_DATABASE_URL=lease_pg_url, KEEL_DATA_DIR=str(tmp_path), KEEL_PLAN_SIGNING_KEY="lease-test-key",
                   KEEL_TEST_CRASH_DIR=str(crash), KEEL_WORKER_MAX_LEASE_EXPIRIES=str(N),
                   PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    zygote = Zygote(env, tmp_path / "zygote.log")
    workers: list[Any] = []

    def spawn() -> Any:
        w = zygote.spawn(["worker", "--lease-seconds", "1", "--poll-seconds", "0.05", "--import", "support.crash_toy"],
                         tmp_path / f"worker{len(workers)}.log")
        workers.append(w)
        return w

    try:
        app = create_app(rt, embedded_worker=False)
        with TestClient(app) as client:
            tenant = "t" + str(time.time_ns())[-10:]
            req = {"x-api-key": rt.principals.create_key(tenant, "rita", "requester")}
            admin = {"x-api-key": rt.principals.create_key(tenant, "ada", "admin")}
            tid = client.post("/threads", json={}, headers=req).json()["thread_id"]
            (crash / f"crash.{tid}").write_text("1")
            rid = client.post(f"/threads/{tid}/runs", json={"assistant_id": "toy_crash", "input": {}},
                              headers=req).json()["run_id"]
            w = spawn()
            deadline = time.monotonic() + 45
            while (run := client.get(f"/threads/{tid}/runs/{rid}", headers=req).json())["status"] != "dead":
                assert time.monotonic() < deadline, f"run not dead-lettered: {run}"
                if w.poll() is not None:  # died on the run: a supervisor starts another
                    w = spawn()
                time.sleep(0.05)
            kills = sorted(p.name for p in crash.glob(f"crashed.{tid}.*"))
            assert len(kills) == N, kills
            assert w.poll() is None, "the worker that dead-lettered the run is alive"
            assert len(workers) == N + 1
            assert (run["dead_reason"], run["lease_expiries"], run["attempts"]) == ("lease_expired_repeatedly", N, N)
            audit = client.get(f"/threads/{tid}/audit", headers=admin).json()["items"]
            assert [a["data"]["reason"] for a in audit if a["data"].get("event") == "dead_lettered"] == [
                "lease_expired_repeatedly"]

            (crash / f"crash.{tid}").unlink()  # the cause is fixed; the admin retries
            assert client.post(f"/dead-letters/{rid}/retry", headers=admin).status_code == 200
            deadline = time.monotonic() + 30
            while (run := client.get(f"/threads/{tid}/runs/{rid}", headers=req).json())["status"] != "success":
                assert run["status"] in ("pending", "running") and time.monotonic() < deadline, run
                time.sleep(0.05)
            assert (run["attempts"], run["lease_expiries"]) == (N + 1, 0)
            assert w.poll() is None and len(workers) == N + 1
    finally:
        stop(*workers)
        zygote.close()
        rt.close()
