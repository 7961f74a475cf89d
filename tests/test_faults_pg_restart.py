"""Restart the PostgreSQL server while 50 support runs are in flight on two workers.

After recovery no run is lost: every run ends (none stays pending or running), each
thread is completed, awaiting approval, escalated or its run dead-lettered (and an admin's
retry of a dead letter then finishes it), every side effect happened at most once per
action, and the servers and workers that lived through the restart serve on without a 5xx.
The cluster restarted is the local one listening on the test database's port.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from tools.registry import side_effect_tools
from support.faults_cluster import END_STATES, Tenant, faults_cluster, postgres_cluster_of  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.serial]

RUNS = 50
FAULT_REASONS = {"budget_exceeded", "model_unavailable", "tool_error", "internal_error", "transient_failure", "timeout",
                 "unavailable", "rate_limited"}
"""Reason codes an outage could cause; none may appear."""


def _restart_postgres(url: str) -> float:
    """Restart the server (fast shutdown: every connection is cut); seconds it took."""
    version, name = postgres_cluster_of(url)
    t0 = time.monotonic()
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"], check=True,
                   capture_output=True, timeout=120)
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as c:
                c.execute("SELECT 1")
            return time.monotonic() - t0
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.1)


def _get(client: httpx.Client, url: str, key: str) -> httpx.Response | str:
    t0 = time.monotonic()
    try:
        return client.get(url, headers={"x-api-key": key}, timeout=10)
    except httpx.HTTPError as e:
        return f"{type(e).__name__} after {time.monotonic() - t0:.1f}s"


def test_postgres_restart_with_50_runs_in_flight(faults_cluster, faults_pg_url):
    c = faults_cluster
    c.wait_workers_ready()
    workers, servers = list(c.worker_pids()), [s.pid for s in c.servers]
    assert len(workers) == 2
    tenants = [Tenant(c), Tenant(c)]
    tickets = sorted(tenants[0].tickets, key=lambda k: int(k.split("-")[1]))[: RUNS // 2]

    def submit(job: tuple[Tenant, str]) -> tuple[Tenant, str, str, str]:
        t, ticket = job
        tid = t.new_thread(server=hash(ticket) % 2)
        return t, ticket, tid, t.start(tid, ticket, server=hash(tid) % 2)

    with ThreadPoolExecutor(8) as ex:
        runs = list(ex.map(submit, [(t, k) for t in tenants for k in tickets]))
    assert len(runs) == RUNS

    # restart once a few runs are done and the rest are queued or running
    deadline = time.monotonic() + 60
    while c.count("SELECT COUNT(*) FROM api_runs WHERE tenant IN (%s, %s) AND status = 'success'",
                  tenants[0].name, tenants[1].name) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    in_flight = c.count("SELECT COUNT(*) FROM api_runs WHERE tenant IN (%s, %s) AND status IN ('pending', 'running')",
                        tenants[0].name, tenants[1].name)
    assert in_flight >= RUNS // 2, in_flight
    took = _restart_postgres(faults_pg_url)
    back = time.monotonic()
    # this process's pool only holds connections the restart cut: none of them is lent out
    assert c.rt.backoffice.get_order(tenants[0].name, "O-5001") is not None

    # every run ends; the servers answer throughout recovery, and without a 5xx once the database is back
    statuses: dict[str, dict[str, Any]] = {}
    late_errors: list[str] = []
    deadline = time.monotonic() + 150
    with httpx.Client() as client:
        while len(statuses) < RUNS:
            assert time.monotonic() < deadline, f"runs stuck: {[r[3] for r in runs if r[3] not in statuses]}"
            for i, (t, ticket, tid, rid) in enumerate(runs):
                if rid in statuses:
                    continue
                r = _get(client, f"{c.urls[i % 2]}/threads/{tid}/runs/{rid}", t.keys["requester"])
                if isinstance(r, str) or r.status_code >= 500:
                    if time.monotonic() - back > 2.0:
                        late_errors.append(f"server {i % 2}, {time.monotonic() - back:.1f}s after the restart: "
                                           f"{r if isinstance(r, str) else r.text}")
                    continue
                assert r.status_code == 200, r.text
                if r.json()["status"] not in ("pending", "running"):
                    statuses[rid] = r.json()
            time.sleep(0.1)
    assert not late_errors, f"server errors after PostgreSQL was back: {late_errors[:10]}"
    assert c.worker_pids() == workers and all(s.poll() is None for s in c.servers), "a process died"
    assert [s.pid for s in c.servers] == servers

    # dead letters (retries used up while the database was down) finish when an admin retries them
    dead = [(t, tid, rid) for t, _, tid, rid in runs if statuses[rid]["status"] == "dead"]
    for t, tid, rid in dead:
        r = httpx.post(f"{c.urls[0]}/dead-letters/{rid}/retry", headers=t.h("admin"), timeout=30)
        assert r.status_code == 200, r.text
    for t, tid, rid in dead:
        statuses[rid] = t.wait(tid, rid, timeout=60)
    bad = {rid: (s["status"], s["error"]) for rid, s in statuses.items() if s["status"] != "success"}
    assert not bad, bad

    outcomes: dict[str, int] = {}
    per_ticket: dict[str, set] = {}
    for t in tenants:
        executed: dict[str, int] = {}
        for tt, ticket, tid, rid in runs:
            if tt is not t:
                continue
            values = t.values(tid)
            assert values.get("status") in END_STATES, (ticket, values.get("status"), values.get("reason_codes"))
            # an escalation is the policy's verdict, never the outage's
            assert not FAULT_REASONS & set(values.get("reason_codes") or []), (ticket, values.get("reason_codes"))
            outcomes[values["status"]] = outcomes.get(values["status"], 0) + 1
            per_ticket.setdefault(ticket, set()).add((values["status"], tuple(values.get("reason_codes") or [])))
            for a in values.get("actions") or []:
                if a["state"] == "executed" and a["tool"] in side_effect_tools():
                    executed[a["tool"]] = executed.get(a["tool"], 0) + 1
        # each executed side effect once: one ledger row per executed action, one refund row per refund
        assert t.effects() == {"tool_ledger": sum(executed.values()), "refunds": executed.get("issue_refund", 0)}
    # the same ticket ended the same way in both tenants, whichever of its runs the restart hit
    assert all(len(v) == 1 for v in per_ticket.values()), {k: v for k, v in per_ticket.items() if len(v) > 1}
    assert outcomes.get("completed", 0) >= 10 and outcomes.get("awaiting_approval", 0) >= 4, outcomes
    print(f"PostgreSQL restart took {took:.1f}s with {in_flight} runs in flight; {len(dead)} dead-lettered "
          f"then retried; outcomes {outcomes}")
