"""The API server's share of a run: CPU, SQL statements and Postgres CPU of ``keel serve`` alone.

    python -m bench.serve_cpu [--clients 20] [--latency 0.5] [--seconds 20] [--mode wait|join]
                              [--py-spy] [--tag NAME] [--keel-root DIR] [--serve-env KEY=VALUE]

:mod:`bench.model_latency` reports the CPU of ``keel serve`` and ``keel worker`` together;
this driver splits them. It starts one ``keel serve`` (``--import bench.sql_counter``:
every statement it sends is counted) and one ``keel worker --concurrency C --import
bench.latency_hook`` (every model call sleeps ``--latency`` s) on a scratch database, each
with its own Postgres ``application_name``, and drives N clients (langgraph-sdk's async
client) through one of two loops, every run one of the demo tickets that complete without
approval:

* ``wait`` (the loop of :mod:`bench.model_latency`): ``runs.wait(new_id, "support",
  if_not_exists="create")``, one ``POST /threads/{id}/runs/wait``;
* ``join``: ``threads.create``, ``runs.create`` (``POST /threads/{id}/runs``) and
  ``runs.join`` (``GET …/join``).

After ``--warmup`` seconds a window of ``--seconds`` is measured: per completed run, the CPU
ms of the serve process and of the worker process, the CPU ms of each one's Postgres
backends, and the statements the server sent (by statement text, the top ones listed).
``--py-spy`` also samples the serve process with py-spy during the window (``pip install
py-spy``, a dev tool, not a keel dependency; ``--gil``: only the thread holding the GIL, i.e.
Python CPU, not threads blocked in I/O) and writes the top functions (own time and
inclusive time) to ``bench/results/serve-profile[-TAG].txt``; py-spy pauses the process to
sample it, so compare CPU figures of runs without it.
``--keel-root DIR`` runs keel's processes from another checkout (``git archive HEAD | tar -x
-C DIR``) for a before/after. Writes ``bench/results/serve_cpu[-TAG].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import AUTO_TICKETS, PG_ADMIN_URL, RESULTS, ROOT, keel_runtime, scratch_database
from bench.http import NOW_ENV, SIGNING_KEY, Procs, Supply, _completed, _cpu_s, _free_port, _wait_http

__all__ = ["main", "summarize_collapsed"]

APPS = {"serve": "bench-serve", "worker": "bench-worker"}
"""``application_name`` of each process's Postgres connections."""


def _backend_cpu(conn: Any, db: str, app: str) -> dict[int, float]:
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                        (db, app)).fetchall()
    return {r[0]: _cpu_s(r[0]) for r in rows}


def _sql(stats_dir: Path, pid: int) -> dict[str, Any]:
    try:
        return json.loads((stats_dir / f"{pid}.sql.json").read_text())
    except (OSError, ValueError):
        return {"total": 0, "by_sql": {}}


def summarize_collapsed(path: Path, top: int = 15) -> str:
    """Top functions of a py-spy ``--format raw`` profile (collapsed stacks ``f1;f2;… count``):
    by own samples (the leaf frame) and by inclusive samples (each function once per stack)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"{total} samples", "", f"top {top} by own samples (leaf frame):"]
    out += [f"{100 * c / total:6.1f}%  {c:7d}  {f}" for f, c in own.most_common(top)]
    out += ["", f"top {3 * top} by inclusive samples (frame anywhere on the stack):"]
    out += [f"{100 * c / total:6.1f}%  {c:7d}  {f}" for f, c in incl.most_common(3 * top)]
    return "\n".join(out)


async def _drive(args: argparse.Namespace, base: str, supply: Supply, stop_at: float,
                 done: list[float]) -> tuple[int, str | None]:
    import httpx
    from langgraph_sdk.client import LangGraphClient

    transport = httpx.AsyncHTTPTransport(retries=5, limits=httpx.Limits(max_connections=args.clients + 20,
                                                                        max_keepalive_connections=args.clients + 20))
    client = LangGraphClient(httpx.AsyncClient(base_url=base, transport=transport, timeout=900))
    errors, first = 0, None

    async def one() -> bool:
        t, ticket = supply.next()
        h = {"x-api-key": t["req"]}
        if args.mode == "wait":
            out = await client.runs.wait(str(uuid.uuid4()), "support", input={"ticket": ticket},
                                         if_not_exists="create", headers=h)
        else:
            th = await client.threads.create(headers=h)
            run = await client.runs.create(th["thread_id"], "support", input={"ticket": ticket}, headers=h)
            out = await client.runs.join(th["thread_id"], run["run_id"], headers=h)
        if not _completed(out):
            raise RuntimeError(f"run did not complete: {json.dumps(out, default=str)[:300]}")
        return True

    async def loop() -> None:
        nonlocal errors, first
        while time.monotonic() < stop_at:
            try:
                ok = await one()
            except Exception as e:  # noqa: BLE001 - counted, the first reported
                ok, first = False, first or f"{type(e).__name__}: {str(e)[:300]}"
            if ok:
                done.append(time.monotonic())
            else:
                errors += 1

    try:
        await asyncio.gather(*(loop() for _ in range(args.clients)))
    finally:
        await client.aclose()
    return errors, first


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    py = sys.executable
    out: dict[str, Any] = {"settings": {k: getattr(args, k) for k in ("clients", "latency", "seconds", "warmup", "mode",
                                                                      "concurrency", "keel_root", "serve_env", "tag")}}
    with scratch_database(args.pg) as url, tempfile.TemporaryDirectory(prefix="keel-bench-serve-") as tmpd:
        tmp = Path(tmpd)
        db = url.rsplit("/", 1)[1]
        stats_dir = tmp / "stats"
        rt = keel_runtime(url + "?application_name=bench-driver", tmp / "bench-data")
        rt.graph("support")
        from engine.queue import RunQueue

        RunQueue(rt.db).setup()
        supply = Supply(rt, "s", AUTO_TICKETS)
        kroot = Path(args.keel_root).resolve() if args.keel_root else ROOT
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "LANGSMITH_", "LANGCHAIN_", "BENCH_"))}
        env.update(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(tmp / "data"), KEEL_NOW=NOW_ENV,
                   KEEL_PLAN_SIGNING_KEY=SIGNING_KEY, KEEL_LOG_LEVEL="WARNING",
                   PYTHONPATH=os.pathsep.join([str(kroot), str(ROOT)]),  # bench.* from this checkout
                   LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false",
                   BENCH_MODEL_LATENCY_S=str(args.latency), BENCH_SQL_STATS_DIR=str(stats_dir))
        procs = Procs(tmp, env)
        senv = {**env, "PGAPPNAME": APPS["serve"]}
        for kv in args.serve_env or []:
            k, _, v = kv.partition("=")
            senv[k] = v
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        admin = psycopg.connect(args.pg, autocommit=True)
        try:
            serve = procs.start("serve", [py, "-m", "cli", "serve", "--port", str(port), "--rate-per-minute", "1e9",
                                          "--import", "bench.sql_counter"], env=senv, cwd=kroot)
            await _wait_http(base, serve, log=lambda: procs.log_tail("serve"))
            procs.start("worker", [py, "-m", "cli", "worker", "--concurrency", str(args.concurrency),
                                            "--import", "bench.latency_hook"],
                                 env={**env, "PGAPPNAME": APPS["worker"]}, cwd=kroot)
            await asyncio.to_thread(procs.wait_ready, "worker", "keel worker:")
            run_s = 3 * args.latency + 0.5
            supply.reserve(int(args.clients * (args.warmup + args.seconds + 2 * run_s) / run_s * 1.3) + 2 * args.clients)
            done: list[float] = []
            t0 = time.monotonic()
            stop_at = t0 + args.warmup + args.seconds
            driving = asyncio.ensure_future(_drive(args, base, supply, stop_at, done))
            await asyncio.sleep(args.warmup)
            a = time.monotonic()
            cpu0 = {n: _cpu_s(p.pid) for n, p in procs.procs.items()}
            pg0 = {n: _backend_cpu(admin, db, app) for n, app in APPS.items()}
            sql0 = _sql(stats_dir, serve.pid)
            spy = None
            raw = RESULTS / f"serve-profile{'-' + args.tag if args.tag else ''}.raw"
            if args.py_spy:
                exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                RESULTS.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen([exe, "record", "-p", str(serve.pid), "-d", str(int(args.seconds)), "-r", "200",
                                        "--gil", "-f", "raw", "-o", str(raw)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            b = time.monotonic()
            cpu1 = {n: _cpu_s(p.pid) for n, p in procs.procs.items()}
            pg1 = {n: _backend_cpu(admin, db, app) for n, app in APPS.items()}
            await asyncio.sleep(1.2)  # the counter file is written every second
            sql1 = _sql(stats_dir, serve.pid)
            n = sum(1 for t in done if a <= t <= b)
            errors, first = await asyncio.wait_for(driving, timeout=2 * run_s + 60)
            if spy is not None:
                _, err = await asyncio.to_thread(spy.communicate)
                if raw.exists():
                    text = summarize_collapsed(raw)
                    (raw.with_suffix(".txt")).write_text(f"py-spy record of keel serve, {args.clients} clients, mode "
                                                         f"{args.mode}, {n} runs in the window\n\n{text}\n")
                    out["profile"] = str(raw.with_suffix(".txt"))
                else:
                    out["profile_error"] = err.decode(errors="replace")[-2000:]
            by_sql = Counter(sql1["by_sql"])
            by_sql.subtract(Counter(sql0["by_sql"]))
            per = (lambda x: round(x / n * 1000, 2)) if n else (lambda x: None)  # noqa: E731
            out.update({
                "runs": n, "errors": errors, "first_error": first, "window_s": round(b - a, 2),
                "runs_per_s": round(n / (b - a), 2),
                "serve_cpu_ms_per_run": per(cpu1["serve"] - cpu0["serve"]),
                "worker_cpu_ms_per_run": per(cpu1["worker"] - cpu0["worker"]),
                "serve_pg_cpu_ms_per_run": per(sum(v - pg0["serve"].get(p, 0.0) for p, v in pg1["serve"].items())),
                "worker_pg_cpu_ms_per_run": per(sum(v - pg0["worker"].get(p, 0.0) for p, v in pg1["worker"].items())),
                "serve_statements_per_run": round((sql1["total"] - sql0["total"]) / n, 2) if n else None,
                "serve_statements_top": [(s, round(c / n, 2)) for s, c in by_sql.most_common(25) if c > 0] if n else [],
                "load_avg": os.getloadavg(),
            })
        finally:
            admin.close()
            procs.stop()
            rt.close()
    return out


def report(out: dict[str, Any]) -> str:
    s = out["settings"]
    lines = [f"{s['clients']} clients, mode {s['mode']}, model latency {s['latency']} s, worker --concurrency "
             f"{s['concurrency']}, window {s['seconds']} s" + (f", keel from {s['keel_root']}" if s["keel_root"] else "")
             + (f", serve env {' '.join(s['serve_env'])}" if s["serve_env"] else ""),
             f"runs {out['runs']} ({out['runs_per_s']} /s), errors {out['errors']}"
             + (f" ({out['first_error']})" if out["first_error"] else ""),
             f"serve CPU ms/run {out['serve_cpu_ms_per_run']}  + its Postgres backends {out['serve_pg_cpu_ms_per_run']}",
             f"worker CPU ms/run {out['worker_cpu_ms_per_run']}  + its Postgres backends {out['worker_pg_cpu_ms_per_run']}",
             f"serve SQL statements/run {out['serve_statements_per_run']}:"]
    lines += [f"  {c:6.2f}  {q}" for q, c in out["serve_statements_top"]]
    lines.append(f"load average {', '.join(f'{x:.1f}' for x in out['load_avg'])}")
    if "profile" in out:
        lines.append(f"profile: {out['profile']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve_cpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--latency", type=float, default=0.5, help="seconds per model call")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--mode", choices=("wait", "join"), default="wait")
    p.add_argument("--concurrency", type=int, default=None, help="keel worker --concurrency (default: --clients)")
    p.add_argument("--py-spy", action="store_true", help="sample keel serve with py-spy during the window")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--keel-root", default=None, help="run keel's processes from this checkout")
    p.add_argument("--serve-env", action="append", metavar="KEY=VALUE", help="an environment variable of keel serve")
    p.add_argument("--pg", default=PG_ADMIN_URL)
    args = p.parse_args(argv)
    args.concurrency = args.concurrency or args.clients
    os.environ["BENCH_MODEL_LATENCY_S"] = str(args.latency)
    out = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"serve_cpu{'-' + args.tag if args.tag else ''}.json").write_text(json.dumps(out, indent=2, default=str))
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
