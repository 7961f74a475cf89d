"""(e) Scale of waiting work: threads parked at their approval interrupt cost nothing.

    python -m bench.parked [--max 10000] [--stages 100,1000,10000] [--requests 200]
                           [--pg postgresql://postgres@127.0.0.1:5432/test]

One scratch database ``keel_bench_<hex>`` (dropped afterwards), one ``keel serve`` and two
``keel worker`` processes on it (each process names itself in ``application_name`` so
its connections can be counted), and one tenant whose threads pile up at the approval
interrupt. At each stage (100, 1,000, 10,000 parked threads) it measures:

- **connections**: ``pg_stat_activity`` rows of the server and of the workers, and how
  many of them are not idle (the benchmark's own connection excluded);
- **workers**: runs in ``running`` state (a parked thread has no run: its run ended
  ``success`` with the thread ``interrupted``), and the workers' CPU use over a 3 s idle
  window;
- **memory**: RSS of the server and of each worker (after the listing requests);
- **listing**: ``GET /approvals?limit=50&offset=…`` over every page in random order
  (at least ``--requests`` requests, sequential, one client), p50/p99/max, and that the
  pages together return every parked thread once;
- **fresh work**: latency of 5 new runs (tickets that complete without approval) with
  that many threads parked.

How the threads are parked: the first 100 are real runs. The tickets that need an
approval (T-6, T-8, T-14, T-21, T-23) are posted to ``POST /tickets`` and the workers run
them to the interrupt. Running 10,000 such runs would take this machine about half an
hour, so the threads beyond 100 are copies of those 100 made at the row level: every row
a real run leaves (6 checkpoints, 16 checkpoint blobs, 29 checkpoint writes including
the ``__interrupt__`` write, 6 stream events, the ``api_threads``, ``api_runs`` and
``run_index`` rows) is copied with the thread id, run id, plan hash and plan signature
replaced. The plan is re-signed for the new thread id (``keel.plan.sign_plan``), so each
copy is exactly what a real run on that thread would have stored, apart from
timestamps; not copied: the run's audit rows (a per-tenant hash chain) and its token
charges. After each bulk copy the copied tables get ``VACUUM (ANALYZE)``, what autovacuum
does shortly after a bulk insert. The copies are checked at the end: one copy of each
ticket and one real thread are approved through ``POST /approvals/{id}/approve`` and
must complete.

Everything (server, workers, Postgres, this load generator) shares this machine's cores.
Writes ``bench/results/parked.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any

import httpx

from bench.common import PG_ADMIN_URL, RESULTS, ROOT, finish, keel_runtime, load_tenant, \
    pg_version, scratch_database, summary, table
from bench.http import NOW_ENV, SIGNING_KEY, Procs, _cpu_s, _free_port, _rss_mb

TENANT = "parked"
PARK_TICKETS = ("T-8", "T-14", "T-21", "T-23", "T-6")
"""Demo tickets that stop at the approval interrupt (and complete once approved)."""
FRESH_TICKETS = ("T-10", "T-12", "T-15", "T-27")
"""Read-only tickets that complete without approval (for the fresh-work probe)."""
COPIED = ("checkpoints", "checkpoint_blobs", "checkpoint_writes", "api_threads", "api_runs", "run_index")


def _url_with(url: str, app: str) -> str:
    return url + ("&" if "?" in url else "?") + f"application_name={app}"


# -- parking: real runs through the API ------------------------------------------------------
def park_real(base: str, key: str, tickets: dict[str, dict[str, Any]], n: int, rt: Any) -> float:
    """Post ``n`` approval tickets to ``POST /tickets`` and wait until all are parked; seconds."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=60) as c:
        def post(i: int) -> None:
            t = {**tickets[PARK_TICKETS[i % len(PARK_TICKETS)]]}
            r = c.post("/tickets", json={"ticket": t})
            r.raise_for_status()

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(post, range(n)))
    deadline = time.monotonic() + 600
    while True:
        with rt.db.transaction() as tx:
            rows = {r["status"]: r["n"] for r in tx.fetchall(
                "SELECT status, COUNT(*) AS n FROM api_threads WHERE tenant = ? GROUP BY status", (TENANT,))}
        if rows.get("interrupted", 0) >= n and not rows.get("busy"):
            break
        if time.monotonic() > deadline or rows.get("error"):
            raise RuntimeError(f"parking stalled: {rows}")
        time.sleep(0.5)
    return time.perf_counter() - t0


# -- parking: row-level copies of real parked threads -------------------------------------------
class Stamper:
    """Copies the rows of real parked threads to new thread ids (see the module docstring)."""

    def __init__(self, url: str, rt: Any, templates: list[str]) -> None:
        import psycopg
        from psycopg.types.string import TextLoader

        self.conn = psycopg.connect(url, autocommit=False)
        for t in ("json", "jsonb"):
            self.conn.adapters.register_loader(t, TextLoader)  # copy JSON as text, byte for byte
        self.signing_key = rt.signing_key()
        self.templates = [self._load(rt, tid) for tid in templates]

    def _load(self, rt: Any, tid: str) -> dict[str, Any]:
        cur = self.conn.cursor()
        tables: dict[str, tuple[list[str], list[tuple]]] = {}
        for table_name in COPIED:
            cur.execute(f"SELECT * FROM {table_name} WHERE thread_id = %s", (tid,))
            tables[table_name] = ([d.name for d in cur.description], cur.fetchall())
        run_id = tables["api_runs"][1][0][tables["api_runs"][0].index("run_id")]
        cur.execute("SELECT * FROM api_run_events WHERE run_id = %s", (run_id,))
        tables["api_run_events"] = ([d.name for d in cur.description], cur.fetchall())
        self.conn.rollback()
        state = rt.graph("support").get_state({"configurable": {"thread_id": tid}})
        signed = state.values["plan"]
        return {"thread_id": tid, "run_id": run_id, "hash": signed["hash"], "signature": signed["signature"],
                "plan": signed["plan"], "tables": tables,
                "counts": {k: len(v[1]) for k, v in tables.items()}}

    def stamp(self, n: int, batch: int = 1000) -> list[str]:
        """Make ``n`` new parked threads; returns their ids."""
        from engine.queue import new_id
        from keel.plan import Plan, sign_plan

        out: list[str] = []
        now = datetime.now(UTC)
        for start in range(0, n, batch):
            rows: dict[str, list[tuple]] = {t: [] for t in (*COPIED, "api_run_events")}
            for i in range(start, min(n, start + batch)):
                tpl = self.templates[i % len(self.templates)]
                tid, rid = str(uuid.uuid4()), new_id()
                signed = sign_plan(Plan.model_validate({**tpl["plan"], "thread_id": tid}), self.signing_key)
                subs = [(tpl["thread_id"], tid), (tpl["run_id"], rid), (tpl["hash"], signed.hash),
                        (tpl["signature"], signed.signature)]
                bsubs = [(a.encode(), b.encode()) for a, b in subs]
                ts = (now + timedelta(microseconds=i)).isoformat()
                for table_name, (cols, trows) in tpl["tables"].items():
                    for r in trows:
                        new = []
                        for col, v in zip(cols, r):
                            if isinstance(v, str):
                                for a, b in subs:
                                    if a in v:
                                        v = v.replace(a, b)
                                if col in ("created_at", "updated_at", "finished_at") and table_name != "api_run_events":
                                    v = ts
                            elif isinstance(v, (bytes, memoryview)):
                                v = bytes(v)
                                for a, b in bsubs:
                                    if a in v:
                                        v = v.replace(a, b)
                            new.append(v)
                        rows[table_name].append(tuple(new))
                out.append(tid)
            with self.conn.cursor() as cur:
                for table_name, trows in rows.items():
                    cols = self.templates[0]["tables"][table_name][0]
                    with cur.copy(f"COPY {table_name} ({', '.join(cols)}) FROM STDIN") as cp:
                        for r in trows:
                            cp.write_row(r)
            self.conn.commit()
        # what autovacuum does within a minute of a bulk insert (visibility map, statistics)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            for table_name in (*COPIED, "api_run_events"):
                cur.execute(f"VACUUM (ANALYZE) {table_name}")
        self.conn.autocommit = False
        return out

    def close(self) -> None:
        self.conn.close()


# -- measurements ------------------------------------------------------------------------------------
def connections(rt: Any) -> dict[str, dict[str, int]]:
    """pg_stat_activity of this database by application (server, workers) and state."""
    with rt.db.transaction() as tx:
        rows = tx.fetchall(
            "SELECT application_name AS app, state, COUNT(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY application_name, state")
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        app = "server" if r["app"] == "keel-serve" else "workers" if str(r["app"]).startswith("keel-worker") else "bench"
        d = out.setdefault(app, {"total": 0, "busy": 0})
        d["total"] += r["n"]
        if r["state"] not in ("idle", None):
            d["busy"] += r["n"]
    return out


def listing(base: str, key: str, expected: int, requests: int, limit: int = 50) -> dict[str, Any]:
    """Page through ``GET /approvals`` in random order; latency and completeness."""
    pages = list(range(0, expected, limit)) or [0]
    order: list[int] = []
    while len(order) < max(requests, len(pages)):
        random.shuffle(pages)
        order += pages
    seen: set[str] = set()
    lat = []
    totals = set()
    with httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=60) as c:
        for off in pages[:10]:  # warm-up
            c.get("/approvals", params={"limit": limit, "offset": off}).raise_for_status()
        for off in order:
            s = time.perf_counter()
            r = c.get("/approvals", params={"limit": limit, "offset": off})
            lat.append((time.perf_counter() - s) * 1000)
            r.raise_for_status()
            body = r.json()
            totals.add(body["total"])
            seen.update(i["thread_id"] for i in body["items"])
    s = summary(lat)
    return {"requests": len(lat), "p50_ms": round(s["p50"], 1), "p99_ms": round(s["p99"], 1),
            "max_ms": round(max(lat), 1), "distinct_listed": len(seen), "total_reported": sorted(totals)}


def fresh_runs(base: str, key: str, tickets: dict[str, dict[str, Any]], n: int = 5) -> list[float]:
    """Latency of new runs that complete without approval (ms)."""
    out = []
    with httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=120) as c:
        for i in range(n):
            s = time.perf_counter()
            r = c.post("/tickets", json={"ticket": tickets[FRESH_TICKETS[i % len(FRESH_TICKETS)]], "wait": True})
            r.raise_for_status()
            assert r.json()["result"].get("status") == "completed", r.text[:500]
            out.append((time.perf_counter() - s) * 1000)
    return out


def measure(stage: int, rt: Any, procs: Procs, base: str, keys: dict[str, str], probe: dict[str, dict[str, Any]],
            requests: int, created_s: float, how: str) -> dict[str, Any]:
    workers = [n for n in procs.procs if n.startswith("worker")]
    with rt.db.transaction() as tx:
        running = tx.fetchone("SELECT COUNT(*) AS n FROM api_runs WHERE status IN ('running', 'pending')")["n"]
        parked = tx.fetchone("SELECT COUNT(*) AS n FROM api_threads WHERE tenant = ? AND status = 'interrupted'",
                             (TENANT,))["n"]
        size = tx.fetchone("SELECT pg_database_size(current_database()) AS b")["b"]
    c0 = {w: _cpu_s(procs.procs[w].pid) for w in workers}
    time.sleep(3.0)
    idle_cpu = sum(_cpu_s(procs.procs[w].pid) - c0[w] for w in workers) / 3.0 / len(workers) * 100
    conns_idle = connections(rt)
    lst = listing(base, keys["appr"], parked, requests)
    fresh = fresh_runs(base, keys["probe"], probe)
    conns = connections(rt)
    row = {
        "parked": parked, "created_by": how, "create_s": round(created_s, 1),
        "runs_running_or_pending": running, "worker_cpu_pct_idle": round(idle_cpu, 2),
        "connections_idle_phase": conns_idle, "connections_after_listing": conns,
        "server_rss_mb": round(_rss_mb(procs.procs["serve"].pid), 1),
        "worker_rss_mb": [round(_rss_mb(procs.procs[w].pid), 1) for w in workers],
        "db_mb": round(size / 2**20, 1),
        "listing": lst,
        "fresh_run_ms": {"p50": round(statistics.median(fresh), 1), "max": round(max(fresh), 1)},
    }
    print(f"  {stage:>6,} parked: listing p50 {lst['p50_ms']} ms p99 {lst['p99_ms']} ms, server RSS "
          f"{row['server_rss_mb']} MB, workers {row['worker_rss_mb']} MB, conns {conns_idle}", file=sys.stderr, flush=True)
    return row


def approve_sample(base: str, key: str, rt: Any, real: list[str], stamped: list[str]) -> list[dict[str, Any]]:
    """Approve one real thread and one copy of each other ticket through the API; all must complete."""
    from engine.approvals import pending_approval

    picks: dict[str, tuple[str, str]] = {}
    for kind, ids in (("real", real), ("copy", stamped)):
        for tid in ids:
            req = pending_approval(rt, tid)
            if req and req["ticket_id"] not in picks and (kind == "copy" or not picks):
                picks[req["ticket_id"]] = (kind, tid)
            if len(picks) == len(PARK_TICKETS):
                break
    out = []
    with httpx.Client(base_url=base, headers={"x-api-key": key}, timeout=120) as c:
        for ticket_id, (kind, tid) in picks.items():
            h = pending_approval(rt, tid)["plan_hash"]
            s = time.perf_counter()
            r = c.post(f"/approvals/{tid}/approve", json={"plan_hash": h, "wait": True})
            ms = (time.perf_counter() - s) * 1000
            status = r.json().get("result", {}).get("status") if r.status_code == 200 else f"HTTP {r.status_code}"
            out.append({"ticket": ticket_id, "thread": kind, "status": status, "ms": round(ms, 1)})
    return out


# -- main ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    stages = sorted({int(x) for x in args.stages.split(",") if int(x) <= args.max} | {args.max})
    out: dict[str, Any] = {"stages": []}
    with scratch_database(args.pg) as url, tempfile.TemporaryDirectory(prefix="keel-bench-parked-") as tmpd:
        tmp = Path(tmpd)
        rt = keel_runtime(_url_with(url, "bench"), tmp / "bench-data")
        rt.graph("support")
        from engine.queue import RunQueue

        RunQueue(rt.db).setup()
        tickets = load_tenant(rt, TENANT)
        probe = load_tenant(rt, "probe")
        keys = {"req": rt.principals.create_key(TENANT, "req", "requester"),
                "appr": rt.principals.create_key(TENANT, "appr", "approver"),
                "probe": rt.principals.create_key("probe", "req", "requester")}
        out["postgres"] = pg_version(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "LANGSMITH_", "LANGCHAIN_"))}
        env.update(KEEL_DATA_DIR=str(tmp / "data"), KEEL_NOW=NOW_ENV, KEEL_PLAN_SIGNING_KEY=SIGNING_KEY,
                   KEEL_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        procs = Procs(tmp, env)
        py = sys.executable
        try:
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            procs.start("serve", [py, "-m", "cli", "serve", "--port", str(port), "--rate-per-minute", "1e9"],
                        ready="keel serve:", env={**env, "KEEL_DATABASE_URL": _url_with(url, "keel-serve")})
            for i in range(args.workers):
                procs.start(f"worker{i}", [py, "-m", "cli", "worker"], ready="keel worker:",
                            env={**env, "KEEL_DATABASE_URL": _url_with(url, f"keel-worker-{i}")})
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/ok", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(procs.log_tail("serve"))
                time.sleep(0.2)

            first = stages[0]
            n_real = min(first, args.real)
            print(f"parking {n_real} threads with real runs …", file=sys.stderr, flush=True)
            secs = park_real(base, keys["req"], tickets, n_real, rt)
            with rt.db.transaction() as tx:
                real = [r["thread_id"] for r in tx.fetchall(
                    "SELECT thread_id FROM api_threads WHERE tenant = ? AND status = 'interrupted'", (TENANT,))]
            stamper = Stamper(_url_with(url, "bench"), rt, real[: len(PARK_TICKETS) * 4])
            out["copied_rows_per_thread"] = stamper.templates[0]["counts"]
            stamped: list[str] = []
            have = n_real
            for stage in stages:
                how = "real runs" if stage <= n_real else f"{n_real} real + copies"
                if stage > have:
                    t0 = time.perf_counter()
                    stamped += stamper.stamp(stage - have)
                    secs = time.perf_counter() - t0
                    have = stage
                out["stages"].append(measure(stage, rt, procs, base, keys, probe, args.requests, secs, how))
            stamper.close()
            out["approved_sample"] = approve_sample(base, keys["appr"], rt, real, stamped)
        finally:
            procs.stop()
            rt.close()
    return out


def report(out: dict[str, Any]) -> str:
    lines = [f"Machine: {out['machine']} (server, 2 workers, Postgres {out.get('postgres', '?')} and the load "
             f"generator share these cores). {out['versions']}.", "",
             "(e) Threads parked at the approval interrupt: connections, workers, memory, and "
             "`GET /approvals?limit=50&offset=…` (every page, random order, sequential).", ""]
    rows = []
    for s in out["stages"]:
        ci, ca = s["connections_idle_phase"], s["connections_after_listing"]
        rows.append([s["parked"], s["created_by"], s["create_s"],
                     f"{ci.get('server', {}).get('total', 0)}/{ci.get('workers', {}).get('total', 0)}"
                     f" ({ci.get('server', {}).get('busy', 0) + ci.get('workers', {}).get('busy', 0)} busy)",
                     f"{ca.get('server', {}).get('total', 0)}/{ca.get('workers', {}).get('total', 0)}",
                     s["runs_running_or_pending"], s["worker_cpu_pct_idle"], s["server_rss_mb"],
                     " / ".join(f"{x:.0f}" for x in s["worker_rss_mb"]), s["db_mb"],
                     s["listing"]["requests"], s["listing"]["p50_ms"], s["listing"]["p99_ms"], s["listing"]["max_ms"],
                     f"{s['listing']['distinct_listed']:,}/{s['parked']:,}", s["fresh_run_ms"]["p50"]])
    lines.append(table(["parked", "created by", "create s", "conns server/workers idle", "conns after listing",
                        "runs running", "worker CPU % idle", "server RSS MB", "worker RSS MB", "DB MB",
                        "list requests", "list p50 ms", "list p99 ms", "list max ms", "listed/parked",
                        "fresh run p50 ms"], rows))
    lines += ["", "Connections: pg_stat_activity rows of the server / of both workers (pools and queue listeners), "
              "busy = not idle. Runs running: api_runs in running or pending state while parked threads exist.",
              "", "Rows copied per parked thread: " + ", ".join(f"{k} {v}" for k, v in out["copied_rows_per_thread"].items()),
              "", "Approved through the API after the last stage (must complete): " + "; ".join(
                  f"{a['ticket']} ({a['thread']}) {a['status']} in {a['ms']:.0f} ms" for a in out["approved_sample"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parked", description=__doc__.split("\n\n")[0])
    p.add_argument("--max", type=int, default=10_000, help="largest number of parked threads")
    p.add_argument("--stages", default="100,1000,10000", help="numbers of parked threads to measure at")
    p.add_argument("--real", type=int, default=100, help="threads parked by real runs (the rest are copies)")
    p.add_argument("--requests", type=int, default=200, help="listing requests per stage (at least every page)")
    p.add_argument("--workers", type=int, default=2, help="`keel worker` processes")
    p.add_argument("--pg", default=PG_ADMIN_URL)
    p.add_argument("--out", default=str(RESULTS / "parked.json"))
    args = p.parse_args(argv)
    t0 = time.monotonic()
    out = run(args)
    return finish(out, args.out, report, t0)


if __name__ == "__main__":
    sys.exit(main())
