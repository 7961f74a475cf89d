"""Tool timeouts and transient errors on the real support graph and Postgres: the tool
runner retries each call with backoff and jitter, the worker retries the run with
exponential backoff and jitter, then dead-letters it; an admin's retry completes it with
the side effect exactly once. Failures are injected per tenant by
:mod:`support.faults_hooks` (counted in the database, across workers)."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support.faults_cluster import BACKOFF_BASE_S, WALL_CLOCK_S, Tenant, faults_cluster  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

RUNNER_BASE_S = 0.05
"""The tool runner's first backoff (``ToolRunner.backoff_base_s``)."""
TOOL_ATTEMPTS = 3
"""Attempts of one tool call: 1 + the policy's ``max_retries`` (2)."""
RUN_ATTEMPTS = 3
"""Attempts of one run: 1 + the policy's ``max_retries`` (2), then dead."""
SLACK_S = 0.5
"""Scheduling slack on upper bounds (a loaded CI machine); lower bounds are exact."""


def _attempts(c, tenant: str) -> list[dict[str, Any]]:
    cols = ("n", "tool_attempt", "run_id", "run_attempt", "run_retries", "run_available_at", "failed", "at")
    rows = c.rows(f"SELECT {', '.join(cols)} FROM fault_tool_attempts WHERE tenant = %s ORDER BY n", tenant)
    return [dict(zip(cols, r)) for r in rows]


def _dead_run(c, failures: int) -> tuple[Tenant, str, str, float]:
    """T-1 with its refund failing ``failures`` times; returns the dead run (and when it started)."""
    t = Tenant(c)
    c.arm_tool(t.name, "issue_refund", failures)
    tid = t.new_thread()
    started = time.time()
    rid = t.start(tid, "T-1")
    run = t.wait(tid, rid, timeout=120)
    assert run["status"] == "dead", run
    return t, tid, rid, started


@pytest.fixture(scope="module")
def dead_runs(faults_cluster):
    """Three tenants whose refunds fail transiently 9 times (= every attempt of every try)."""
    with ThreadPoolExecutor(3) as ex:
        return list(ex.map(lambda _: _dead_run(faults_cluster, TOOL_ATTEMPTS * RUN_ATTEMPTS), range(3)))


def test_transient_errors_retry_with_growing_jittered_delays_then_dead_letter(dead_runs, faults_cluster):
    c = faults_cluster
    run_delays: dict[int, list[float]] = {2: [], 3: []}
    call_gaps: dict[int, list[float]] = {2: [], 3: []}
    for t, tid, rid, _ in dead_runs:
        run = t.run(tid, rid)
        assert run["attempts"] == RUN_ATTEMPTS and run["retries"] == RUN_ATTEMPTS, run
        assert "ToolFailure" in run["error"] and "transient_failure" in run["error"], run["error"]
        assert t.effects() == {"tool_ledger": 0, "refunds": 0}, "a failed attempt leaves no side effect"
        rows = _attempts(c, t.name)
        assert [(r["run_attempt"], r["tool_attempt"]) for r in rows] == [
            (a, k) for a in range(1, RUN_ATTEMPTS + 1) for k in range(1, TOOL_ATTEMPTS + 1)]
        assert {r["run_id"] for r in rows} == {rid} and all(r["failed"] for r in rows)
        by_attempt = {a: [r for r in rows if r["run_attempt"] == a] for a in range(1, RUN_ATTEMPTS + 1)}
        for a in range(2, RUN_ATTEMPTS + 1):
            # the worker scheduled attempt ``a`` at available_at, right after attempt a-1 failed
            failed_at = by_attempt[a - 1][-1]["at"]
            first = by_attempt[a][0]
            assert first["run_retries"] == a - 1
            delay = first["run_available_at"] - failed_at
            run_delays[a].append(delay)
            assert first["at"] >= first["run_available_at"] - 0.01, "not claimed before its backoff ended"
            # within each run attempt the tool runner's own retries back off too
        for attempt_rows in by_attempt.values():
            for k in (2, 3):
                call_gaps[k].append(attempt_rows[k - 1]["at"] - attempt_rows[k - 2]["at"])

    # run retries: exponential with equal jitter, retry r waits in [exp/2, exp], exp = base * 2^(r-1)
    for a, delays in run_delays.items():
        exp = BACKOFF_BASE_S * 2 ** (a - 2)
        assert all(exp / 2 <= d <= exp + SLACK_S for d in delays), (a, delays)
    assert statistics.mean(run_delays[3]) > statistics.mean(run_delays[2]), run_delays
    spread = [(d - BACKOFF_BASE_S * 2 ** (a - 2) / 2) / (BACKOFF_BASE_S * 2 ** (a - 2) / 2)
              for a, ds in run_delays.items() for d in ds]
    assert max(spread) - min(spread) > 0.05, f"delays are not jittered: {run_delays}"
    # tool retries inside one attempt: 25-50 ms, then 50-100 ms (runner base 50 ms)
    for k, gaps in call_gaps.items():
        exp = RUNNER_BASE_S * 2 ** (k - 2)
        assert all(exp / 2 <= g <= exp + SLACK_S for g in gaps), (k, gaps)
    assert statistics.median(call_gaps[3]) > statistics.median(call_gaps[2]), call_gaps

    # the dead letters are listed for the tenant's admin (and only there)
    for t, tid, rid, _ in dead_runs:
        dead = httpx.get(f"{c.urls[1]}/dead-letters", headers=t.h("admin"), timeout=30).json()["items"]
        assert [d["run_id"] for d in dead] == [rid]
        assert t.values(tid).get("status") not in ("completed", "escalated")


def test_an_admin_retry_of_a_dead_letter_completes_once(dead_runs, faults_cluster):
    """Retried (after the run's wall-clock budget has passed, as an admin would, hours
    later): resumes at EXECUTE_ACTION, the 10th refund attempt succeeds, once."""
    c = faults_cluster
    t, tid, rid, started = dead_runs[0]
    time.sleep(max(0.0, started + WALL_CLOCK_S + 0.5 - time.time()))
    assert httpx.post(f"{c.urls[0]}/dead-letters/{rid}/retry", headers=t.h("requester"), timeout=30).status_code == 403
    r = httpx.post(f"{c.urls[0]}/dead-letters/{rid}/retry", headers=t.h("admin"), timeout=30)
    assert r.status_code == 200, r.text
    run = t.wait(tid, rid, timeout=60)
    assert run["status"] == "success" and run["attempts"] == RUN_ATTEMPTS + 1, run
    values = t.values(tid)
    assert values["status"] == "completed", (values["status"], values.get("reason_codes"))
    assert values["verification"]["ok"] is True
    assert t.refunds("O-5001") == 1 and t.effects() == {"tool_ledger": 1, "refunds": 1}
    assert t.order("O-5001")["refunded_cents"] == 4599
    rows = _attempts(c, t.name)
    assert len(rows) == TOOL_ATTEMPTS * RUN_ATTEMPTS + 1 and not rows[-1]["failed"]
    # completed nodes were not re-run: only EXECUTE_ACTION ran on every attempt
    nodes = [r[0] for r in c.rows("SELECT node FROM fault_node_entries WHERE thread_id = %s ORDER BY at", tid)]
    assert nodes == ["triage", "retrieve_context", "propose_action", "policy_check"] + ["execute_action"] * 4 + [
        "verify", "complete"]
    again = httpx.post(f"{c.urls[0]}/dead-letters/{rid}/retry", headers=t.h("admin"), timeout=30)
    assert again.status_code == 409


def test_a_tool_timeout_is_retried_and_the_abandoned_attempt_never_commits(faults_cluster):
    """The first refund attempt hangs past the runner's timeout: the call fails ``timeout``,
    the run is retried after a backoff and the refund is issued once (the abandoned attempt
    rolls back when it wakes up)."""
    c = faults_cluster
    t = Tenant(c)
    c.arm_tool(t.name, "issue_refund", 1, mode="timeout")
    tid = t.new_thread()
    rid = t.start(tid, "T-1")
    run = t.wait(tid, rid, timeout=60)
    assert run["status"] == "success" and run["attempts"] == 2 and run["retries"] == 1, run
    assert t.values(tid)["status"] == "completed"
    time.sleep(1.0)  # the abandoned attempt has woken up and rolled back by now
    assert t.refunds("O-5001") == 1 and t.effects() == {"tool_ledger": 1, "refunds": 1}
    rows = _attempts(c, t.name)
    assert [(r["run_attempt"], r["tool_attempt"], r["failed"]) for r in rows] == [(1, 1, 1), (2, 1, 0)]
    assert rows[1]["run_available_at"] - rows[0]["at"] >= BACKOFF_BASE_S / 2


def test_a_database_error_during_a_model_call_is_retried_not_escalated(faults_cluster):
    """The token charge after TRIAGE's model call hits a lost database connection: that is
    not the model failing (``model_unavailable``); the step fails, the worker retries it
    and the ticket gets the same outcome as without the fault."""
    c = faults_cluster
    t = Tenant(c)
    (c.faults / f"dbfail.{t.name}").write_text("1")
    tid = t.new_thread()
    rid = t.start(tid, "T-1")
    run = t.wait(tid, rid, timeout=60)
    assert run["status"] == "success" and run["attempts"] == 2 and run["retries"] == 1, run
    values = t.values(tid)
    assert values["status"] == "completed", (values["status"], values.get("reason_codes"))
    assert t.effects() == {"tool_ledger": 1, "refunds": 1}
