"""Throughput of runs through keel's API on Postgres with 1 and 2 workers, and the latency
of resuming an approval.

    python bench/api_bench.py [--runs 60] [--approvals 15] [--pg postgresql://postgres@127.0.0.1:5432/test]

Creates a scratch database, starts one ``keel serve`` and N ``keel worker`` processes
(one worker thread each), submits ``--runs`` demo tickets concurrently through the API
(``POST /tickets``), and measures completed runs per second from the first submission to
the last run finished. Then times ``POST /approvals/{thread}/approve`` with ``wait`` (the
request until the resumed run has executed, verified and completed). Prints JSON; also
written to bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.api_helpers import demo_tickets, free_port, load_demo, stop, wait_ok  # noqa: E402

AUTO = ["T-1", "T-10", "T-12"]
"""Demo tickets that complete without approval (refund under the limit, tracking, a KB answer)."""


def _env(url: str, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(data), KEEL_NOW="2026-11-25T12:00:00Z",
               KEEL_PLAN_SIGNING_KEY="bench", KEEL_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    return env


def _keel(env, *args, log=None):
    return subprocess.Popen([sys.executable, "-m", "keel.cli", *args], env=env, cwd=ROOT,
                            stdout=open(log, "w") if log else subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _key(env, tenant, role, user) -> str:
    out = subprocess.run([sys.executable, "-m", "keel.cli", "keys", "create", "--tenant", tenant, "--role", role,
                          "--user", user], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def bench(admin_url: str, workers: int, n_runs: int, n_approvals: int, tmp: Path) -> dict:
    name = f"keel_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    procs = []
    try:
        env = _env(url, tmp / name)
        tenant = "bench"
        req = _key(env, tenant, "requester", "req")
        appr = _key(env, tenant, "approver", "appr")
        admin = _key(env, tenant, "admin", "adm")
        from keel.config import Settings
        from keel.runtime import Runtime

        rt = Runtime(Settings(database_url=url, data_dir=tmp / name))
        load_demo(rt, tenant)
        rt.close()
        port = free_port()
        procs.append(_keel(env, "serve", "--port", str(port), "--rate-per-minute", "100000", log=tmp / f"{name}.serve.log"))
        base = f"http://127.0.0.1:{port}"
        wait_ok(base, proc=procs[0])
        for i in range(workers):
            procs.append(_keel(env, "worker", "--poll-seconds", "0.02", log=tmp / f"{name}.w{i}.log"))
        time.sleep(2.0)
        tickets = demo_tickets(tenant)
        client = httpx.Client(base_url=base, timeout=120)

        def submit(i: int) -> tuple[str, str]:
            t = {**tickets[AUTO[i % len(AUTO)]], "id": f"B-{i}"}
            r = client.post("/tickets", json={"ticket": t}, headers={"x-api-key": req})
            r.raise_for_status()
            return r.json()["thread_id"], r.json()["run"]["run_id"]

        # warm-up (graph compilation, connection pools)
        for tid, rid in [submit(-1 - i) for i in range(workers * 2)]:
            client.get(f"/threads/{tid}/runs/{rid}/join", headers={"x-api-key": req})
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as ex:
            ids = list(ex.map(submit, range(n_runs)))
            list(ex.map(lambda p: client.get(f"/threads/{p[0]}/runs/{p[1]}/join", headers={"x-api-key": req}), ids))
        elapsed = time.perf_counter() - t0
        statuses = [client.get(f"/threads/{t}/runs/{r}", headers={"x-api-key": req}).json()["status"] for t, r in ids]
        assert all(s == "success" for s in statuses), statuses

        latencies = []
        from support.api_helpers import demo_fixtures

        for i in range(n_approvals):
            # a fresh back office each time, so the same refund needs approval again
            client.post("/fixtures", json=demo_fixtures(tenant), headers={"x-api-key": admin}).raise_for_status()
            t = {**tickets["T-8"], "id": f"A-{i}"}
            out = client.post("/tickets", json={"ticket": t, "wait": True}, headers={"x-api-key": req}).json()
            h = out["result"]["__interrupt__"][0]["value"]["plan_hash"]
            s = time.perf_counter()
            r = client.post(f"/approvals/{out['thread_id']}/approve", json={"plan_hash": h}, headers={"x-api-key": appr})
            latencies.append(time.perf_counter() - s)
            assert r.json()["result"]["status"] in ("completed", "escalated"), r.text
        return {
            "workers": workers,
            "runs": n_runs,
            "seconds": round(elapsed, 3),
            "runs_per_s": round(n_runs / elapsed, 2),
            "approval_resume_ms_p50": round(statistics.median(latencies) * 1000, 1),
            "approval_resume_ms_max": round(max(latencies) * 1000, 1),
        }
    finally:
        stop(*procs)
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--runs", type=int, default=60)
    p.add_argument("--approvals", type=int, default=15)
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = [bench(args.pg, w, args.runs, args.approvals, Path(tmp)) for w in (1, 2)]
    out = {"results": results, "note": "one `keel serve`, N `keel worker` processes (1 thread each), local Postgres"}
    print(json.dumps(out, indent=2))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "api.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
