"""(f) What one run costs the database: the inputs of the capacity model in docs/scaling.md.

    python -m bench.capacity [--runs 200] [--approval-runs 50]

One scratch Postgres database, keel's worker path in this process (the run is queued as the
API queues it, claimed, leased, executed on the checkpointed graph and finished, exactly as
``keel worker`` does), the demo tickets that complete without approval, then tickets that stop
at the approval interrupt and are approved (two runs each: start and resume). Measured per
run, from the server's own counters so nothing is estimated:

- **transactions** committed (``pg_stat_database.xact_commit`` of the scratch database);
- **statements** (``pg_stat_statements`` is not assumed: rows inserted/updated/deleted from
  ``pg_stat_database`` stand in for write volume);
- **WAL bytes** (``pg_current_wal_lsn()`` difference: what a replica and the backups ship);
- **bytes kept** (growth of the database size on disk, after a checkpoint of the stats);
- **CPU ms** of this process (keel: API-side work is not included) and of the Postgres
  server processes (every ``postgres`` process's utime+stime from /proc, so the machine should
  be otherwise idle for this column), and of the scratch database's own backends only (the
  connections of this process, named by the database in their process title: the server's
  background writers are not in it, and neither is anybody else's load on a shared server).

CPU columns are wall-clock sensitive to other load on the machine; the counts and bytes are not.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (AUTO_TICKETS, RESULTS, finish, keel_runtime, load_tenant, pg_version,
                          scratch_database, table)

APPROVAL_TICKETS = ("T-8", "T-14", "T-21", "T-23", "T-6")
"""Demo tickets that stop at the approval interrupt."""


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _postgres_cpu_s(database: str | None = None) -> float:
    """utime+stime of every process named postgres (the server and its backends); with
    ``database``, of the backends connected to it only (their process title names it)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") \
                if database else ""
        except OSError:
            continue
        name = stat[stat.find("(") + 1:stat.rfind(")")]
        if database and f" {database} " not in f" {title} ":
            continue
        if name.startswith("postgres"):
            f = stat[stat.rfind(")") + 2:].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])  # utime stime cutime cstime
    return total / tick


class Counters:
    """Server-side counters of one database, read on a separate connection."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.db = url.rsplit("/", 1)[-1]

    def read(self) -> dict[str, float]:
        # stats are sent to the collector at transaction end; a snapshot clear makes them current
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        time.sleep(0.6)  # PGSTAT_MIN_INTERVAL: backends flush pending stats at most every second or so
        row = self.conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, pg_database_size(datname),"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') FROM pg_stat_database WHERE datname = %s",
            (self.db,)).fetchone()
        out = dict(zip(("xacts", "inserted", "updated", "deleted", "bytes", "wal"), map(float, row)))
        for name, writes in self.conn.execute(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables").fetchall():
            out[f"table:{name}"] = float(writes)
        return out

    def close(self) -> None:
        self.conn.close()


def _enqueue(q: Any, tenant: str, ticket: dict[str, Any]) -> str:
    th, _ = q.create_thread(tenant, "req", graph_id="support")
    q.create_run(tenant, th["thread_id"], assistant_id="support", graph_id="support", kind="wait",
                 payload={"input": {"ticket": ticket}}, created_by="req", correlation_id=str(uuid.uuid4()),
                 set_requester=True)
    return th["thread_id"]


def measure(runs: int, approval_runs: int) -> dict[str, Any]:
    from types import SimpleNamespace

    from api.services import submit_run
    from engine.approvals import pending_approval
    from engine.queue import RunQueue
    from keel.principals import Principal
    from engine.worker import Worker

    out: dict[str, Any] = {"runs": runs, "approval_runs": approval_runs}
    with scratch_database() as url, tempfile.TemporaryDirectory() as d:
        out["postgres"] = pg_version(url)
        rt = keel_runtime(url, Path(d))
        q = RunQueue(rt.db).setup()
        w = Worker(rt, q, worker_id="capacity")
        tenants = [load_tenant(rt, f"cap{i:04d}") for i in range(runs // len(AUTO_TICKETS) + 2)]
        appr = [load_tenant(rt, f"apr{i:04d}") for i in range(approval_runs // len(APPROVAL_TICKETS) + 2)]
        for i in range(len(appr)):
            rt.principals.upsert(f"apr{i:04d}", "appr", "approver")

        def drain() -> int:
            n = 0
            while w.run_one():
                n += 1
            return n

        # warm-up: imports, caches, the first connections
        _enqueue(q, "cap0000", tenants[-1]["T-1"] | {"tenant": "cap0000"})
        drain()
        counters = Counters(url)
        rows = []
        for label, n in (("completes without approval", runs), ("stops for approval, then approved", approval_runs)):
            if n <= 0:
                continue
            threads = []
            if label.startswith("completes"):
                for i in range(n):
                    tenant = f"cap{i // len(AUTO_TICKETS):04d}"
                    threads.append(_enqueue(q, tenant, tenants[i // len(AUTO_TICKETS)][AUTO_TICKETS[i % len(AUTO_TICKETS)]]))
            before, c0, p0, t0 = counters.read(), _self_cpu_s(), _postgres_cpu_s(), time.perf_counter()
            b0 = _postgres_cpu_s(counters.db)
            if label.startswith("completes"):
                done = drain()
            else:
                for i in range(n):
                    tenant = f"apr{i // len(APPROVAL_TICKETS):04d}"
                    threads.append((tenant, _enqueue(q, tenant, appr[i // len(APPROVAL_TICKETS)][APPROVAL_TICKETS[i % len(APPROVAL_TICKETS)]])))
                done = drain()
                st = SimpleNamespace(runtime=rt, queue=q)
                for tenant, tid in threads:
                    req = pending_approval(rt, tid)
                    assert req is not None, f"{tid} is not waiting for approval"
                    who = Principal(tenant=tenant, user_id="appr", role="approver")
                    submit_run(st, who, q.get_thread(tenant, tid), assistant_id="support",
                               correlation_id=str(uuid.uuid4()), command={"resume": {
                                   "decision": "approve", "plan_hash": req["plan_hash"], "reviewer": "appr",
                                   "reason": "capacity benchmark"}})
                done += drain()
            wall = time.perf_counter() - t0
            c1, p1, b1, after = _self_cpu_s(), _postgres_cpu_s(), _postgres_cpu_s(counters.db), counters.read()
            tickets = n
            rows.append({
                "case": label, "tickets": tickets, "runs": done,
                "xacts_per_ticket": (after["xacts"] - before["xacts"]) / tickets,
                "rows_written_per_ticket": sum(after[k] - before[k] for k in ("inserted", "updated", "deleted")) / tickets,
                "wal_kb_per_ticket": (after["wal"] - before["wal"]) / tickets / 1024,
                "db_kb_per_ticket": (after["bytes"] - before["bytes"]) / tickets / 1024,
                "keel_cpu_ms_per_ticket": (c1 - c0) / tickets * 1000,
                "pg_cpu_ms_per_ticket": (p1 - p0) / tickets * 1000,
                "pg_backend_cpu_ms_per_ticket": (b1 - b0) / tickets * 1000,
                "wall_ms_per_ticket": wall / tickets * 1000,
                "rows_by_table": {k[6:]: round((after.get(k, 0) - before.get(k, 0)) / tickets, 2)
                                  for k in sorted(after, key=lambda k: before.get(k, 0) - after[k])
                                  if k.startswith("table:") and after[k] - before.get(k, 0) > 0},
            })
        counters.close()
        rt.close()
    out["rows"] = rows
    return out


def report(out: dict[str, Any]) -> str:
    rows = out["rows"]
    head = ["case", "tickets", "runs", "transactions/ticket", "rows written/ticket", "WAL KiB/ticket",
            "DB KiB kept/ticket", "keel CPU ms/ticket", "Postgres CPU ms/ticket", "its backends' CPU ms/ticket",
            "wall ms/ticket (1 worker thread)"]
    body = [[r["case"], r["tickets"], r["runs"], r["xacts_per_ticket"], r["rows_written_per_ticket"],
             r["wal_kb_per_ticket"], r["db_kb_per_ticket"], r["keel_cpu_ms_per_ticket"], r["pg_cpu_ms_per_ticket"],
             r["pg_backend_cpu_ms_per_ticket"], r["wall_ms_per_ticket"]] for r in rows]
    per_table = "\n\n".join(
        f"Rows written per ticket by table ({r['case']}): "
        + ", ".join(f"`{t}` {n:g}" for t, n in r["rows_by_table"].items()) for r in rows)
    return (f"### What one ticket costs the database ({out.get('machine', '')}, PostgreSQL {out['postgres']})\n\n"
            + table(head, body) + "\n\n" + per_table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200, help="tickets that complete without approval")
    p.add_argument("--approval-runs", type=int, default=50, help="tickets approved by a reviewer (two runs each)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    out = measure(args.runs, args.approval_runs)
    return finish(out, str(RESULTS / "capacity.json"), report, t0)


if __name__ == "__main__":
    sys.exit(main())
