"""Checkpoint retention (``keel prune``): finished runs lose history, waiting runs never do.

Every test runs on the embedded store (SqliteSaver) and on the real Postgres server
(PostgresSaver, its own tenant in the session's test database).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path

import pytest
from langgraph.types import Command

from engine.approvals import pending_approval, validate_resume
from keel.config import Settings
from engine.retention import checkpoint_rows, prune
from engine.runtime import Runtime
from tools.fixtures import parse_fixtures_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATER = datetime.now(UTC) + timedelta(days=1)
"""A wall clock after every run of the test: with ``ttl_days=0`` every finished run is expired."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request, tmp_path):
    """A runtime on either store, a fresh tenant with the demo back office, and its tickets."""
    tenant = "acme"
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        tenant = "r" + uuid.uuid4().hex[:10]
    rt = Runtime(Settings(database_url=url, data_dir=tmp_path, now=NOW, plan_signing_key="test-key"))
    raw = json.loads((DEMO / "fixtures.json").read_text())
    raw["tenant"] = tenant
    rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(raw)).fixtures)
    rt.principals.upsert(tenant, "boss", "approver")
    tickets = {t["id"]: {**t, "tenant": tenant} for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}
    yield rt, tenant, tickets
    rt.close()


def start(rt, tickets, ticket_id) -> tuple[str, dict]:
    thread = str(uuid.uuid4())
    state = rt.graph().invoke({"ticket": tickets[ticket_id]}, {"configurable": {"thread_id": thread, "requester": "req"}}, context=rt.context())
    return thread, state


def history(rt, thread) -> list:
    return list(rt.graph().get_state_history({"configurable": {"thread_id": thread}}))


def approve(rt, tenant, thread) -> dict:
    request = pending_approval(rt, thread)
    assert request is not None, "the thread no longer waits for approval"
    value = validate_resume(rt, thread, rt.principals.get(tenant, "boss"),
                            {"decision": "approve", "plan_hash": request["plan_hash"]})
    return rt.graph().invoke(Command(resume=value), {"configurable": {"thread_id": thread}}, context=rt.context())


def test_ttl_deletes_finished_threads_and_spares_the_waiting_one(world):
    rt, tenant, tickets = world
    done, s1 = start(rt, tickets, "T-1")
    escalated, s2 = start(rt, tickets, "T-2")
    waiting, s3 = start(rt, tickets, "T-8")
    assert (s1["status"], s2["status"], s3["status"]) == ("completed", "escalated", "awaiting_approval")
    waiting_history = [s.config["configurable"]["checkpoint_id"] for s in history(rt, waiting)]
    rt.recordings.flush()
    assert all(rt.recordings.thread(t) for t in (done, escalated, waiting))  # keel replay-trace's input

    report = prune(rt, ttl_days=0, now=LATER, tenant=tenant)

    assert sorted(report.deleted_threads) == sorted([done, escalated])
    # a thread without checkpoints cannot be replayed: its recording goes with it, the waiting one's stays
    assert rt.recordings.thread(done) == [] and rt.recordings.thread(escalated) == []
    assert rt.recordings.thread(waiting) and report.recordings_removed > 0
    assert report.rows_removed["checkpoints"] > 0 and report.rows_removed["writes"] > 0
    assert history(rt, done) == [] and history(rt, escalated) == []
    assert [s.config["configurable"]["checkpoint_id"] for s in history(rt, waiting)] == waiting_history
    # the waiting run is still approvable, and then executes its side effect once
    final = approve(rt, tenant, waiting)
    assert final["status"] == "completed"
    assert rt.backoffice.count_rows("refunds", tenant) == 2  # T-1's and T-8's
    assert rt.backoffice.get_order(tenant, "O-5002")["refunded_cents"] == 8999


def test_ttl_keeps_threads_that_finished_recently(world):
    rt, tenant, tickets = world
    done, _ = start(rt, tickets, "T-1")
    report = prune(rt, ttl_days=30, tenant=tenant)
    assert report.deleted_threads == [] and sum(report.rows_removed.values()) == 0
    assert len(history(rt, done)) > 1


def test_keep_latest_keeps_get_state_of_finished_threads(world):
    rt, tenant, tickets = world
    done, final = start(rt, tickets, "T-1")
    answered, _ = start(rt, tickets, "T-12")
    waiting, _ = start(rt, tickets, "T-8")
    before = {t: rt.graph().get_state({"configurable": {"thread_id": t}}) for t in (done, answered)}
    waiting_len = len(history(rt, waiting))
    assert len(history(rt, done)) > 2

    report = prune(rt, keep_latest=True, tenant=tenant)

    assert sorted(report.trimmed_threads) == sorted([done, answered])
    assert report.deleted_threads == []
    for t, snap in before.items():
        now = rt.graph().get_state({"configurable": {"thread_id": t}})
        assert now.values == snap.values and now.next == () and not now.interrupts
        assert now.config["configurable"]["checkpoint_id"] == snap.config["configurable"]["checkpoint_id"]
        assert len(history(rt, t)) == 1
    assert rt.graph().get_state({"configurable": {"thread_id": done}}).values["status"] == final["status"] == "completed"
    assert len(history(rt, waiting)) == waiting_len
    # nothing is left to trim: a second prune is a no-op
    again = prune(rt, keep_latest=True, tenant=tenant)
    assert again.trimmed_threads == [] and sum(again.rows_removed.values()) == 0
    assert approve(rt, tenant, waiting)["status"] == "completed"


def test_ttl_and_keep_latest_together(world):
    rt, tenant, tickets = world
    old, _ = start(rt, tickets, "T-1")
    recent, _ = start(rt, tickets, "T-10")
    # make the first run look old: finished 40 days ago in the run index
    with rt.db.transaction() as tx:
        tx.execute("UPDATE run_index SET updated_at = ? WHERE thread_id = ?",
                   ((datetime.now(UTC) - timedelta(days=40)).isoformat(), old))
    report = prune(rt, ttl_days=30, keep_latest=True, tenant=tenant)
    assert report.deleted_threads == [old] and report.trimmed_threads == [recent]
    assert history(rt, old) == [] and len(history(rt, recent)) == 1


def test_dry_run_deletes_nothing_and_predicts_the_prune(world):
    rt, tenant, tickets = world
    threads = [start(rt, tickets, t)[0] for t in ("T-1", "T-5", "T-12", "T-8")]
    rows = checkpoint_rows(rt, threads)
    dry = prune(rt, keep_latest=True, dry_run=True, tenant=tenant)
    assert checkpoint_rows(rt, threads) == rows
    assert len(dry.trimmed_threads) == 3 and dry.rows_removed["checkpoints"] > 0
    real = prune(rt, keep_latest=True, tenant=tenant)
    assert real.rows_removed == dry.rows_removed
    assert sorted(real.trimmed_threads) == sorted(dry.trimmed_threads)


def test_index_saying_finished_is_not_enough(world):
    """A waiting thread the run index wrongly calls finished is still left alone."""
    rt, tenant, tickets = world
    waiting, _ = start(rt, tickets, "T-8")
    rt.threads.record(waiting, tenant=tenant, status="completed")
    n = len(history(rt, waiting))
    report = prune(rt, ttl_days=0, keep_latest=True, now=LATER, tenant=tenant)
    assert report.deleted_threads == [] and report.trimmed_threads == []
    assert report.skipped == {waiting: "interrupted"}
    assert len(history(rt, waiting)) == n
    assert approve(rt, tenant, waiting)["status"] == "completed"


def test_thread_with_a_queued_api_run_is_left_alone(tmp_path):
    """A finished thread that keel's API queue is about to run again keeps its history."""
    rt = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key="test-key"))
    try:
        rt.ensure_fixtures()
        tickets = {t["id"]: t for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}
        queued, _ = start(rt, tickets, "T-1")
        idle, _ = start(rt, tickets, "T-5")
        # embedded store only: a stand-in for the API's queue table (the shared Postgres test
        # database gets the real one from the API's own set-up)
        rt.db.executescript("CREATE TABLE api_runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, status TEXT NOT NULL)")
        with rt.db.transaction() as tx:
            tx.execute("INSERT INTO api_runs VALUES ('r1', ?, 'pending')", (queued,))
            tx.execute("INSERT INTO api_runs VALUES ('r2', ?, 'success')", (idle,))
        report = prune(rt, keep_latest=True)
        assert report.trimmed_threads == [idle]
        assert report.skipped == {queued: "with a queued or running API run"}
        assert len(history(rt, queued)) > 1
    finally:
        rt.close()


def test_prune_needs_a_rule(world):
    rt, _, _ = world
    with pytest.raises(ValueError):
        prune(rt)


def keel(*args, env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=e, cwd=ROOT,
                          timeout=300)


def test_cli_prune(tmp_path):
    env = {"KEEL_DATA_DIR": str(tmp_path / "data")}
    assert keel("demo", env=env).returncode == 0
    bad = keel("prune", env=env)
    assert bad.returncode == 2 and "--ttl" in bad.stderr and "Traceback" not in bad.stderr
    dry = keel("prune", "--keep-latest", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would keep only the latest checkpoint of 25 finished threads" in dry.stdout
    out = keel("prune", "--ttl", "30", "--keep-latest", env=env)
    assert out.returncode == 0, out.stderr
    assert "kept only the latest checkpoint of 25 finished threads" in out.stdout
    assert "checkpoints" in out.stdout
    # the five runs waiting for approval are untouched and still listed
    pending = json.loads(keel("approvals", "--json", env=env).stdout)
    assert len(pending) == 5
