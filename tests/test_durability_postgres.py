"""Durability on the real Postgres server: resume in a new process, survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone, UTC
from pathlib import Path

import pytest

from keel.config import Settings
from engine.runtime import Runtime
from tools.fixtures import parse_fixtures_text

ROOT = Path(__file__).resolve().parents[1]
PROC = ROOT / "tests" / "support" / "proc.py"
NOW = "2026-11-25T12:00:00Z"

pytestmark = pytest.mark.postgres


@pytest.fixture()
def world(pg_url, tmp_path):
    """A fresh tenant in the test database, with demo records and principals."""
    tenant = "t" + uuid.uuid4().hex[:10]
    raw = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())
    raw["tenant"] = tenant
    parsed = parse_fixtures_text(json.dumps(raw))
    settings = Settings(database_url=pg_url, data_dir=tmp_path, now=datetime(2026, 11, 25, 12, tzinfo=UTC),
                        plan_signing_key="pg-test-key")
    rt = Runtime(settings)
    rt.backoffice.load_fixtures(parsed.fixtures)
    rt.principals.upsert(tenant, "boss", "approver")
    env = {**os.environ, "KEEL_DATABASE_URL": pg_url, "KEEL_NOW": NOW, "KEEL_PLAN_SIGNING_KEY": "pg-test-key",
           "KEEL_DATA_DIR": str(tmp_path), "KEEL_LOG_LEVEL": "WARNING"}
    tickets = {t["id"]: {**t, "tenant": tenant}
               for t in map(json.loads, (ROOT / "keel" / "demo" / "tickets.jsonl").read_text().splitlines())}
    yield rt, env, tenant, tickets
    rt.close()


def proc(env, *args, check=True) -> dict:
    out = subprocess.run([sys.executable, str(PROC), *args], env=env, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_approval_resumes_in_a_new_process(world):
    rt, env, tenant, tickets = world
    thread = str(uuid.uuid4())
    first = proc(env, "start", thread, json.dumps(tickets["T-8"]))
    assert first["status"] == "awaiting_approval" and first["interrupted"]
    assert rt.backoffice.count_rows("refunds", tenant) == 0
    done = proc(env, "resume", thread, "--approve-as", "boss")
    assert done["status"] == "completed"
    assert rt.backoffice.get_order(tenant, "O-5002")["refunded_cents"] == 8999
    assert rt.backoffice.count_rows("refunds", tenant) == 1
    assert rt.backoffice.count_rows("tool_ledger", tenant) == 1


def test_sigkill_mid_run_then_rerun_executes_side_effect_once(world, tmp_path):
    rt, env, tenant, tickets = world
    thread = str(uuid.uuid4())
    marker = tmp_path / "side-effect-done"
    child = subprocess.Popen(
        [sys.executable, str(PROC), "start", thread, json.dumps(tickets["T-1"]), "--kill-after-side-effect", str(marker)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "child never reached the side effect"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # the refund committed with its ledger row; the checkpoint after EXECUTE_ACTION did not
    assert rt.backoffice.count_rows("refunds", tenant) == 1
    snap = rt.graph().get_state({"configurable": {"thread_id": thread}})
    assert snap.next == ("execute_action",)

    done = proc(env, "continue", thread)
    assert done["status"] == "completed"
    assert rt.backoffice.count_rows("refunds", tenant) == 1
    assert rt.backoffice.count_rows("tool_ledger", tenant) == 1
    assert rt.backoffice.get_order(tenant, "O-5001")["refunded_cents"] == 4599
