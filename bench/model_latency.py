"""Runs that wait on models: throughput against the ideal, and what holding them costs.

    python -m bench.model_latency [--quick] [--latency 5] [--clients 1,50,200,500]
                                  [--concurrency 500] [--workers 1] [--systems bare,dev,keel]
                                  [--seconds 40] [--pg postgresql://postgres@127.0.0.1:5432/test]

In production a run spends most of its life waiting on a model. Every model call of the
support graph sleeps ``--latency`` seconds (:mod:`bench.latency_hook`, which wraps the
local provider identically in the three systems), then answers as usual. N clients
(langgraph-sdk's async client over HTTP, or N threads for the bare graph) loop "start a
run on a fresh thread and wait for its output", every run one of the demo tickets that
complete without approval, each (tenant, ticket) pair once. Systems:

* **bare** – the support graph invoked in this process (``Runtime.graph``, pooled
  PostgresSaver), one thread per client.
* **langgraph dev** – serving the support graph (keel's stores on the same Postgres),
  ``--n-jobs-per-worker`` = ``--concurrency``.
* **keel** – one ``keel serve`` and ``--workers`` ``keel worker --concurrency C`` processes.

Each cell: the clients start, a warm-up of about two run times passes, then a window of
``--seconds`` is measured; runs still in flight at its end are drained, not counted.

Columns: runs/s completed in the window; the **ideal**: runs that can be in flight
(``min(clients, capacity)``; capacity = ``workers × concurrency`` for keel, the jobs of
langgraph dev, the clients for bare) ÷ model time per run (latency × calls per run,
measured), capped by the **CPU ceiling** (cores ÷ CPU seconds per run, the serving
processes plus their Postgres backends); p50/p99 latency per run; **in model**: mean
number of runs inside a model call over the window (from the hook's time-integral) and
its peak; **threads**, **RSS** (peak of the serving processes), **PG conns** (peak
connections of the serving processes, by ``application_name``), CPU ms per run of the
serving processes and of their Postgres backends.

On a shared machine wall-clock numbers drift: the tables give the load average, and CPU
per run and the counts (threads, connections, runs in the model) are the figures to
compare. Writes ``bench/results/model_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import AUTO_TICKETS, PG_ADMIN_URL, RESULTS, ROOT, finish, keel_runtime, pg_version, scratch_database, summary, table
from bench.http import NOW_ENV, SIGNING_KEY, Procs, Supply, _completed, _cpu_s, _free_port, _langgraph_bin, _rss_mb, _wait_http

__all__ = ["main"]

log = logging.getLogger("bench.model_latency")

APP = {"bare": "bench-bare", "langgraph dev": "bench-dev", "keel": "bench-keel"}
"""``application_name`` of each system's Postgres connections (``PGAPPNAME``)."""


def _family(pid: int) -> list[int]:
    """A process and its descendants, from each process's main-thread ``children`` file only
    (``bench.http._tree`` reads every thread's: costly with hundreds of threads, and this
    process samples often)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def _threads(pid: int) -> int:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("Threads:"):
                return int(ln.split()[1])
    except OSError:
        pass
    return 0


class Probe:
    """What one system holds: its processes (threads, RSS, CPU), Postgres backends and
    connections (by application name), and the latency hook's counters."""

    def __init__(self, pids: Callable[[], list[int]], admin_url: str, db: str, app: str,
                 stats: Callable[[], list[dict[str, Any]]], runners: Callable[[], list[int]] | None = None,
                 tree: bool = True) -> None:
        self.pids, self.admin_url, self.db, self.app, self.stats = pids, admin_url, db, app, stats
        self._walk = _family if tree else (lambda p: [p])
        """The in-process system is this process alone: its children are the other systems."""
        self.runners = runners or pids
        """The processes that execute runs (keel: the workers, without the server)."""
        import psycopg

        self._pg = psycopg.connect(admin_url, autocommit=True)

    def backends(self) -> list[int]:
        rows = self._pg.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
                                (self.db, self.app + "%")).fetchall()
        return [r[0] for r in rows]

    def sample(self) -> dict[str, float]:
        procs = [q for p in self.pids() for q in self._walk(p)]
        snap = self.stats()
        runners = [q for p in self.runners() for q in self._walk(p)]
        return {"threads": sum(_threads(p) for p in procs), "rss_mb": sum(_rss_mb(p) for p in procs),
                "conns": len(self.backends()), "in_model": sum(s["in_flight"] for s in snap),
                "runner_threads": sum(_threads(p) for p in runners), "runner_rss_mb": sum(_rss_mb(p) for p in runners)}

    def cpu(self) -> float:
        return sum(_cpu_s(q) for p in self.pids() for q in self._walk(p))

    def close(self) -> None:
        self._pg.close()


@dataclass
class Cell:
    system: str
    clients: int
    capacity: int
    latency_s: float
    done: list[tuple[float, float]] = field(default_factory=list)  # (end, latency_s) of completed runs
    errors: int = 0
    first_error: str | None = None
    window: tuple[float, float] = (0.0, 0.0)
    cpu_s: float = 0.0
    pg_cpu_s: float = 0.0
    calls: int = 0
    calls_per_run: float = float("nan")
    abandoned: int = 0
    """Clients still waiting for a run when the drain was cut off."""
    """Model calls per run, over the whole cell (every run that ended, drained ones too)."""
    area: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)
    load: tuple[float, float] = (0.0, 0.0)

    def row(self, nproc: int) -> dict[str, Any]:
        a, b = self.window
        lat = [x * 1000 for end, x in self.done if a <= end <= b]
        n = len(lat)
        s = summary(lat)
        secs = b - a
        rate = n / secs if secs > 0 else 0.0
        calls_per_run = self.calls_per_run
        model_s = self.latency_s * calls_per_run
        cpu_run = (self.cpu_s + self.pg_cpu_s) / n if n else float("nan")
        ceiling = nproc / cpu_run if n and cpu_run > 0 else float("inf")
        by_model = min(self.clients, self.capacity) / model_s if n and model_s > 0 else float("inf")
        ideal = min(by_model, ceiling)
        peak = lambda k: max((x[k] for x in self.samples), default=float("nan"))  # noqa: E731
        return {
            "system": self.system, "clients": self.clients, "capacity": self.capacity, "runs": n,
            "errors": self.errors, "runs_per_s": round(rate, 2), "ideal_by_model": round(by_model, 2),
            "cpu_ceiling": round(ceiling, 2), "ideal": round(ideal, 2),
            "pct_ideal": round(100 * rate / ideal, 1) if ideal and ideal != float("inf") else None,
            "p50_ms": round(s["p50"], 0), "p99_ms": round(s["p99"], 0),
            "calls_per_run": round(calls_per_run, 2), "in_model_mean": round(self.area / secs, 1) if secs else None,
            "in_model_peak": peak("in_model"), "threads_peak": peak("threads"), "rss_mb_peak": round(peak("rss_mb"), 0),
            "pg_conns_peak": peak("conns"), "runner_threads_peak": peak("runner_threads"),
            "runner_rss_mb_peak": round(peak("runner_rss_mb"), 0),
            "cpu_ms_per_run": round(self.cpu_s / n * 1000, 1) if n else None,
            "pg_cpu_ms_per_run": round(self.pg_cpu_s / n * 1000, 1) if n else None,
            "load_avg_1m": [round(x, 2) for x in self.load], "first_error": self.first_error,
            "abandoned": self.abandoned,
        }


def _stats_total(snaps: list[dict[str, Any]]) -> tuple[int, float]:
    return sum(s["finished"] for s in snaps), sum(s["area"] for s in snaps)


async def measure(cell: Cell, one: Callable[[], Awaitable[bool]], probe: Probe, warm_s: float, seconds: float,
                  drain_s: float = 60.0) -> Cell:
    """Clients loop over ``one()``; after ``warm_s`` a window of ``seconds`` is measured."""
    t0 = time.monotonic()
    stop_at = t0 + warm_s + seconds

    async def client() -> None:
        while time.monotonic() < stop_at:
            s = time.monotonic()
            try:
                ok = await one()
            except Exception as e:  # noqa: BLE001 - counted, first one reported
                ok = False
                cell.first_error = cell.first_error or f"{type(e).__name__}: {str(e)[:300]}"
            if ok:
                cell.done.append((time.monotonic(), time.monotonic() - s))
            else:
                cell.errors += 1

    calls_start = _stats_total(probe.stats())[0]
    tasks = [asyncio.ensure_future(client()) for _ in range(cell.clients)]
    await asyncio.sleep(warm_s)
    l0 = os.getloadavg()[0]
    a = time.monotonic()
    c0, calls0 = probe.cpu(), _stats_total(probe.stats())
    pg0 = {p: _cpu_s(p) for p in probe.backends()}
    while time.monotonic() < stop_at:
        cell.samples.append(probe.sample())
        await asyncio.sleep(min(0.5, max(0.0, stop_at - time.monotonic())))
    b = time.monotonic()
    c1, calls1 = probe.cpu(), _stats_total(probe.stats())
    pg1 = {p: _cpu_s(p) for p in probe.backends()}
    cell.window, cell.cpu_s = (a, b), c1 - c0
    cell.pg_cpu_s = sum(v - pg0.get(p, 0.0) for p, v in pg1.items())
    cell.calls, cell.area = calls1[0] - calls0[0], calls1[1] - calls0[1]
    cell.load = (l0, os.getloadavg()[0])
    # drain: in-flight runs end (not counted); a system far behind is cut off after a while
    # (its abandoned runs still finish on the server before the next cell's warm-up ends)
    _, late = await asyncio.wait(tasks, timeout=drain_s)
    for t in late:
        t.cancel()
    cell.abandoned = len(late)
    await asyncio.sleep(0.3)  # the hook's counters of other processes are written every 0.25 s
    ended = len(cell.done) + cell.errors
    cell.calls_per_run = (_stats_total(probe.stats())[0] - calls_start) / ended if ended else float("nan")
    return cell


def _progress(r: dict[str, Any]) -> None:
    print(f"  {r['system']:<14} clients={r['clients']:<4} runs={r['runs']:<5} {r['runs_per_s']:>7.2f} runs/s "
          f"(ideal {r['ideal']}, {r['pct_ideal']}%) p50={r['p50_ms']:.0f} ms in-model={r['in_model_mean']} "
          f"threads={r['threads_peak']} conns={r['pg_conns_peak']} cpu={r['cpu_ms_per_run']}+{r['pg_cpu_ms_per_run']} ms"
          f" errors={r['errors']}" + (f" ({r['first_error']})" if r["first_error"] else ""), file=sys.stderr, flush=True)


def _http_client(url: str, clients: int) -> Any:
    """langgraph-sdk's async client with room for every client's request at once (its
    default transport allows 100 connections)."""
    import httpx
    from langgraph_sdk.client import LangGraphClient

    transport = httpx.AsyncHTTPTransport(retries=5, limits=httpx.Limits(max_connections=clients + 20,
                                                                        max_keepalive_connections=clients + 20))
    return LangGraphClient(httpx.AsyncClient(base_url=url, transport=transport, timeout=900))


def _dir_stats(d: Path, pids: Callable[[], list[int]]) -> Callable[[], list[dict[str, Any]]]:
    """The hook counters written by the processes of one system."""
    def read() -> list[dict[str, Any]]:
        out = []
        for p in (q for pid in pids() for q in _family(pid)):
            f = d / f"{p}.json"
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                pass
        return out

    return read


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench import latency_hook

    clients_grid = [int(x) for x in args.clients.split(",")]
    systems = args.systems.split(",")
    nproc = os.cpu_count() or 1
    out: dict[str, Any] = {"cells": []}
    run_s = args.latency * 3 + 0.5  # three model calls per support run (measured: calls_per_run)
    warm_s = max(3.0, 1.5 * run_s)
    drain_s = 2 * run_s + 10
    with scratch_database(args.pg) as url, tempfile.TemporaryDirectory(prefix="keel-bench-latency-") as tmpd:
        tmp = Path(tmpd)
        db = url.rsplit("/", 1)[1]
        stats_dir = tmp / "stats"
        rt = keel_runtime(url + f"?application_name={APP['bare']}", tmp / "bench-data")
        rt.graph("support")
        from engine.queue import RunQueue

        RunQueue(rt.db).setup()
        supply = Supply(rt, "m", AUTO_TICKETS)
        out["postgres"] = pg_version(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "LANGSMITH_", "LANGCHAIN_", "BENCH_"))}
        env.update(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(tmp / "data"), KEEL_NOW=NOW_ENV,
                   KEEL_PLAN_SIGNING_KEY=SIGNING_KEY, KEEL_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
                   LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false",
                   BENCH_MODEL_LATENCY_S=str(args.latency), BENCH_MODEL_STATS_DIR=str(stats_dir))
        procs = Procs(tmp, env)
        py = sys.executable

        def reserve(clients: int, capacity: int) -> None:
            est = min(clients, capacity) / max(run_s, 0.1) * (warm_s + args.seconds + run_s) * 1.5 + 2 * clients
            supply.reserve(int(min(est, 3 * clients + 400)))  # more are loaded on demand (Supply.next)

        try:
            cells: dict[str, Callable[[int], Awaitable[Cell]]] = {}
            dev_max = 0
            if "bare" in systems:
                graph, context = rt.graph("support"), rt.context("support")

                def invoke() -> bool:
                    ticket = supply.next()[1]
                    cfg = {"configurable": {"thread_id": str(uuid.uuid4()), "requester": "req"}}
                    return _completed(graph.invoke({"ticket": ticket}, cfg, context=context))

                async def bare_cell(n: int) -> Cell:
                    from concurrent.futures import ThreadPoolExecutor

                    me = os.getpid()
                    probe = Probe(lambda: [me], args.pg, db, APP["bare"], lambda: [latency_hook.STATS.snapshot()],
                                  tree=False)
                    probe.cpu = lambda: time.process_time()  # type: ignore[method-assign]
                    ex = ThreadPoolExecutor(n, thread_name_prefix="bare")
                    loop = asyncio.get_running_loop()
                    reserve(n, n)
                    try:
                        return await measure(Cell("bare", n, n, args.latency), lambda: loop.run_in_executor(ex, invoke),
                                             probe, warm_s, args.seconds, drain_s)
                    finally:
                        ex.shutdown(wait=True)
                        probe.close()

                cells["bare"] = bare_cell
            if "dev" in systems:
                exe = _langgraph_bin()
                if exe is None:
                    raise SystemExit("langgraph-cli is missing: pip install -e '.[dev]'")
                dev_port = _free_port()
                dev_cwd = tmp / "dev"
                dev_cwd.mkdir()
                cfg = json.loads((ROOT / "langgraph.json").read_text())
                cfg["dependencies"] = [str(ROOT)]
                cfg["graphs"] = {"support": str(ROOT / "bench" / "latency_studio.py") + ":support"}
                (dev_cwd / "langgraph.json").write_text(json.dumps(cfg))
                p = procs.start("dev", [exe, "dev", "--port", str(dev_port), "--no-browser", "--no-reload",
                                        "--n-jobs-per-worker", str(args.concurrency), "--server-log-level", "WARNING",
                                        "--config", str(dev_cwd / "langgraph.json")], cwd=dev_cwd,
                                env={**env, "PGAPPNAME": APP["langgraph dev"]})
                dev_url = f"http://127.0.0.1:{dev_port}"
                await _wait_http(dev_url, p, log=lambda: procs.log_tail("dev"))

                async def dev_cell(n: int) -> Cell:
                    client = _http_client(dev_url, n)

                    async def one() -> bool:
                        _, ticket = supply.next()
                        return _completed(await client.runs.wait(str(uuid.uuid4()), "support", input={"ticket": ticket},
                                                                 if_not_exists="create"))

                    pids = lambda: [procs.procs["dev"].pid]  # noqa: E731
                    probe = Probe(pids, args.pg, db, APP["langgraph dev"], _dir_stats(stats_dir, pids))
                    reserve(n, args.concurrency)
                    try:
                        return await measure(Cell("langgraph dev", n, args.concurrency, args.latency), one, probe,
                                             warm_s, args.seconds, drain_s)
                    finally:
                        probe.close()
                        await client.aclose()

                cells["dev"] = dev_cell
                dev_max = args.dev_max_clients
            if "keel" in systems:
                port = _free_port()
                base = f"http://127.0.0.1:{port}"
                kenv = {**env, "PGAPPNAME": APP["keel"]}
                kroot = Path(args.keel_root).resolve() if args.keel_root else ROOT
                kenv["PYTHONPATH"] = str(kroot)
                if args.run_threads:
                    kenv["KEEL_WORKER_RUN_THREADS"] = str(args.run_threads)
                for kv in args.keel_env or []:
                    k, _, v = kv.partition("=")
                    kenv[k] = v
                p = procs.start("serve", [py, "-m", "cli", "serve", "--port", str(port), "--rate-per-minute", "1e9"],
                                env=kenv, cwd=kroot)
                await _wait_http(base, p, log=lambda: procs.log_tail("serve"))
                names = [f"worker{i}" for i in range(args.workers)]
                for name in names:
                    procs.start(name, [py, "-m", "cli", "worker", "--concurrency", str(args.concurrency),
                                       "--import", "bench.latency_hook"], env=kenv, cwd=kroot)
                for name in names:
                    await asyncio.to_thread(procs.wait_ready, name, "keel worker:")

                async def keel_cell(n: int) -> Cell:
                    client = _http_client(base, n)

                    async def one() -> bool:
                        t, ticket = supply.next()
                        return _completed(await client.runs.wait(str(uuid.uuid4()), "support", input={"ticket": ticket},
                                                                 if_not_exists="create", headers={"x-api-key": t["req"]}))

                    pids = lambda: [procs.procs[x].pid for x in ("serve", *names)]  # noqa: E731
                    probe = Probe(pids, args.pg, db, APP["keel"], _dir_stats(stats_dir, pids),
                                  runners=lambda: [procs.procs[x].pid for x in names])
                    cap = args.workers * args.concurrency
                    reserve(n, cap)
                    try:
                        return await measure(Cell("keel", n, cap, args.latency), one, probe, warm_s, args.seconds, drain_s)
                    finally:
                        probe.close()
                        await client.aclose()

                cells["keel"] = keel_cell
            for n in clients_grid:
                print(f"{n} client(s), {args.latency:g} s per model call …", file=sys.stderr, flush=True)
                for name in ("bare", "dev", "keel"):
                    if name in cells and not (name == "dev" and n > dev_max):
                        row = (await cells[name](n)).row(nproc)
                        _progress(row)
                        out["cells"].append(row)
                        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                        Path(args.out).write_text(json.dumps({**out, "partial": True}, indent=2))
        finally:
            procs.stop()
            rt.close()
    return out


def report(out: dict[str, Any]) -> str:
    s = out["settings"]
    lines = [f"Machine: {out['machine']}; Postgres {out.get('postgres', '?')} on the same machine; {out['versions']}.",
             f"Model latency {s['latency']:g} s per call; keel: {s['workers']} worker process(es) × --concurrency "
             f"{s['concurrency']}" + (f", KEEL_WORKER_RUN_THREADS={s['run_threads']}" if s.get("run_threads") else "")
             + (f", {' '.join(s['keel_env'])}" if s.get("keel_env") else "")
             + (f", keel from {s['keel_root']}" if s.get("keel_root") else "")
             + f"; langgraph dev --n-jobs-per-worker {s['concurrency']}; window {s['seconds']:g} s per cell.",
             ""]
    rows = [[c["system"], c["clients"], c["runs"], c["errors"], c["runs_per_s"], c["ideal"],
             c["pct_ideal"] if c["pct_ideal"] is not None else "-", c["cpu_ceiling"], c["p50_ms"], c["p99_ms"],
             c["in_model_mean"], c["in_model_peak"], c["threads_peak"], c.get("runner_threads_peak", "-"),
             c["rss_mb_peak"], c.get("runner_rss_mb_peak", "-"), c["pg_conns_peak"],
             c["cpu_ms_per_run"] if c["cpu_ms_per_run"] is not None else "-",
             c["pg_cpu_ms_per_run"] if c["pg_cpu_ms_per_run"] is not None else "-",
             f"{c['load_avg_1m'][0]:.1f}→{c['load_avg_1m'][1]:.1f}"] for c in out["cells"]]
    lines.append(table(["system", "clients", "runs", "errors", "runs/s", "ideal", "% ideal", "CPU ceiling", "p50 ms",
                        "p99 ms", "in model (mean)", "in model (peak)", "threads", "worker threads", "RSS MB",
                        "worker RSS MB", "PG conns",
                        "CPU ms/run", "PG CPU ms/run", "load avg"], rows))
    lines += ["", "ideal = min(min(clients, capacity) ÷ model s per run, CPU ceiling); CPU ceiling = cores ÷ "
              "(CPU ms/run + PG CPU ms/run); peaks sampled every 0.5 s. threads, RSS MB: every serving process "
              "(keel: serve + workers); worker threads/RSS: the processes executing runs (keel: the workers only)."]
    bare = {c["clients"]: c for c in out["cells"] if c["system"] == "bare"}
    ratios = [f"{c['clients']} clients {c['cpu_ms_per_run'] / bare[c['clients']]['cpu_ms_per_run']:.2f}×"
              for c in out["cells"] if c["system"] == "keel" and c["clients"] in bare
              and c["cpu_ms_per_run"] and bare[c["clients"]]["cpu_ms_per_run"]]
    if ratios:
        lines.append("keel CPU/run ÷ bare CPU/run (serving processes only, target ≤ 1.2×): " + ", ".join(ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="0.5 s calls, 1/20/100 clients, 10 s windows (~3 minutes)")
    p.add_argument("--latency", type=float, default=None, help="seconds per model call (default 5, quick 0.5)")
    p.add_argument("--clients", default=None, help="client counts (default 1,50,200,500; quick 1,20,100)")
    p.add_argument("--seconds", type=float, default=None, help="measured window per cell (default 40, quick 10)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="keel worker --concurrency and langgraph dev jobs (default: the largest client count)")
    p.add_argument("--workers", type=int, default=1, help="keel worker processes")
    p.add_argument("--keel-root", default=None,
                   help="run `keel serve`/`keel worker` from this checkout (e.g. `git archive HEAD`, for a before/after)")
    p.add_argument("--keel-env", action="append", metavar="KEY=VALUE",
                   help="an environment variable of keel's processes (e.g. KEEL_DB_POOL_TIMEOUT_S=30)")
    p.add_argument("--run-threads", type=int, default=None,
                   help="KEEL_WORKER_RUN_THREADS of the keel workers (LangGraph executor threads per run)")
    p.add_argument("--systems", default="bare,dev,keel")
    p.add_argument("--dev-max-clients", type=int, default=100,
                   help="langgraph dev only up to this many clients (it runs ~6 sync nodes at once: beyond, runs only queue)")
    p.add_argument("--pg", default=PG_ADMIN_URL, help="Postgres server (a scratch database is created on it)")
    p.add_argument("--out", default=str(RESULTS / "model_latency.json"))
    args = p.parse_args(argv)
    args.latency = args.latency if args.latency is not None else (0.5 if args.quick else 5.0)
    args.clients = args.clients or ("1,20,100" if args.quick else "1,50,200,500")
    args.seconds = args.seconds or (10.0 if args.quick else 40.0)
    args.concurrency = args.concurrency or max(int(x) for x in args.clients.split(","))
    bad = [x for x in args.systems.split(",") if x not in ("bare", "dev", "keel")]
    if bad or args.latency < 0 or args.seconds <= 0 or args.workers < 1 or args.concurrency < 1:
        print(f"python -m bench.model_latency: bad arguments{' (unknown systems ' + ','.join(bad) + ')' if bad else ''}",
              file=sys.stderr)
        return 2
    # the hook reads its latency and stats directory at import: set before bench.latency_hook loads
    os.environ["BENCH_MODEL_LATENCY_S"] = str(args.latency)
    os.environ.pop("BENCH_MODEL_STATS_DIR", None)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    t0 = time.monotonic()
    out = asyncio.run(run(args))
    out["settings"] = {k: getattr(args, k) for k in ("latency", "clients", "seconds", "concurrency", "workers",
                                                     "systems", "quick", "run_threads", "keel_root", "keel_env")}
    out["load_avg_end"] = os.getloadavg()
    return finish(out, args.out, report, t0)


if __name__ == "__main__":
    sys.exit(main())
