"""(b) End-to-end over HTTP on Postgres and (c) approval-resume latency under load.

    python -m bench.http [--quick] [--seconds 10] [--workers 1,2,4] [--clients 1,8,32]
                         [--worker-concurrency 1,4] [--approvals 16] [--no-dev]
                         [--pg postgresql://postgres@127.0.0.1:5432/test]

One scratch database ``keel_bench_<hex>`` (dropped afterwards) and one asyncio load
generator (langgraph-sdk's async client, N concurrent clients, each looping "start a run
on a fresh thread and wait for its output": ``runs.wait(uuid4, "support", input=…,
if_not_exists="create")``), in this order:

1. **bare** – the support graph invoked directly in this process (``Runtime.graph`` with
   its pooled PostgresSaver, ``graph.invoke`` on a fresh thread), 1, 8 and 32 threads.
2. **langgraph dev** – ``langgraph dev`` serving the project's ``langgraph.json`` (its
   in-memory runtime: queue and checkpoints in memory; keel's own stores – back office,
   ledger, audit, token budget, run index – on the same Postgres database, so the nodes
   do the same work), default ``--n-jobs-per-worker 10``.
3. **keel** – one ``keel serve`` and 1, 2, 4 ``keel worker`` processes, everything on
   Postgres; one series with one worker thread per process (the CLI's default) and one
   with ``--concurrency 4`` (``--worker-concurrency`` picks the series).

Each cell runs for ``--seconds`` (clients stop starting runs then; in-flight runs finish
and count) after a short warm-up. Runs/s = completed runs / time to the last completion.
Every run uses one of the demo tickets that completes without approval, cycling through
them, each (tenant, ticket) pair once: a fresh demo tenant (back office + API key,
loaded between cells) per 11 runs keeps every run on the same path. A run that does
not end ``completed`` counts as an error.

(c) With each worker count (one thread each), ``--approvals`` threads are first run to their approval
interrupt (demo tickets that need one), then, while 8 background clients keep the
workers busy, resumed one at a time, alternately via ``POST /approvals/{id}/approve``
(``wait: true``) and ``runs.wait(command={"resume": …})``; the latency is from the
request to the resumed run's final output (executed, verified, completed). Also
measured with no background load.

Everything shares this machine's cores (server, workers, Postgres, langgraph dev and the
load generator itself): the printed table names the core count and the 1-minute load
average around each cell, because other processes on the machine skew single cells.
Writes ``bench/results/http.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable

from bench.common import (
    AUTO_TICKETS, PG_ADMIN_URL, RESULTS, ROOT, finish, keel_runtime, load_tenant, pg_version, scratch_database,
    summary, table,
)

NOW_ENV = "2026-11-25T12:00:00Z"
SIGNING_KEY = "bench-key"
APPROVAL_TICKETS = ("T-8", "T-14", "T-21", "T-23", "T-6")
"""Demo tickets that stop at the approval interrupt and complete once approved."""

log = logging.getLogger("bench.http")


# -- tickets: every (tenant, ticket) pair once ----------------------------------------------
class Supply:
    """Hands out ``(api_key, ticket)`` pairs; each demo tenant serves each ticket once.

    Tenants are loaded (back office, requester and approver keys) by :meth:`reserve`,
    called between cells so loading is never timed.
    """

    def __init__(self, rt: Any, prefix: str, tickets: tuple[str, ...]) -> None:
        self.rt, self.prefix, self.tickets = rt, prefix, tickets
        self.tenants: list[dict[str, Any]] = []
        self.used = 0

    def _add(self) -> None:
        name = f"{self.prefix}{len(self.tenants):05d}"
        tickets = load_tenant(self.rt, name)
        self.tenants.append({
            "tenant": name,
            "tickets": tickets,
            "req": self.rt.principals.create_key(name, "req", "requester"),
            "appr": self.rt.principals.create_key(name, "appr", "approver"),
        })

    def reserve(self, n: int) -> None:
        """Make sure ``n`` more pairs are available."""
        while len(self.tenants) * len(self.tickets) < self.used + n:
            self._add()

    def next(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(tenant record, ticket)`` never handed out before."""
        i = self.used
        self.used += 1
        if i // len(self.tickets) >= len(self.tenants):  # ran past what was reserved
            self._add()
        t = self.tenants[i // len(self.tickets)]
        return t, t["tickets"][self.tickets[i % len(self.tickets)]]


# -- processes -------------------------------------------------------------------------------
def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _tree(pid: int) -> list[int]:
    """A process and its descendants (langgraph dev forks its server)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo += [int(k) for k in kids]
        except OSError:
            pass
    return out


class Procs:
    """Child processes of one benchmark, with logs in a temp dir; CPU accounting."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], ready: str | None = None, cwd: Path = ROOT,
              timeout: float = 90.0, env: dict[str, str] | None = None) -> subprocess.Popen:
        logf = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(argv, cwd=cwd, env=env or self.env, stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs[name] = p
        if ready is not None:
            deadline = time.monotonic() + timeout
            while ready not in (self.tmp / f"{name}.log").read_text(errors="replace"):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n" + self.log_tail(name))
                time.sleep(0.1)
        return p

    def wait_ready(self, name: str, ready: str, timeout: float = 90.0) -> None:
        """Wait for ``ready`` in the process's output."""
        p, deadline = self.procs[name], time.monotonic() + timeout
        while ready not in (self.tmp / f"{name}.log").read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n" + self.log_tail(name))
            time.sleep(0.1)

    def log_tail(self, name: str, n: int = 3000) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-n:]

    def cpu(self, names: list[str] | None = None) -> float:
        total = 0.0
        for name, p in self.procs.items():
            if names is None or name in names:
                total += sum(_cpu_s(q) for q in _tree(p.pid))
        return total

    def stop(self, *names: str) -> None:
        for name in names or list(self.procs):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0, log: Callable[[], str] = str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server at {url} exited with {proc.returncode}:\n{log()}")
            try:
                if (await c.get(url + "/ok", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


# -- the load generator ------------------------------------------------------------------------
@dataclass
class Cell:
    system: str
    workers: int | None
    clients: int
    threads: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = float("nan")
    load: tuple[float, float] = (0.0, 0.0)
    first_error: str | None = None

    @property
    def runs(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.runs / self.elapsed_s if self.elapsed_s else 0.0

    def row(self) -> dict[str, Any]:
        s = summary(self.latencies_ms)
        return {"system": self.system, "workers": self.workers, "threads_per_worker": self.threads,
                "clients": self.clients, "runs": self.runs,
                "errors": self.errors, "runs_per_s": round(self.rate, 2), "p50_ms": round(s["p50"], 1),
                "p99_ms": round(s["p99"], 1), "mean_ms": round(s["mean"], 1),
                "cpu_ms_per_run": round(self.cpu_s / self.runs * 1000, 1) if self.runs else None,
                "load_avg_1m": [round(x, 2) for x in self.load], "first_error": self.first_error}


async def drive(cell: Cell, one: Callable[[int], Awaitable[bool]], seconds: float,
                stop: asyncio.Event | None = None) -> Cell:
    """``cell.clients`` coroutines call ``one(i)`` in a loop until ``seconds`` passed (or ``stop``)."""
    counter = iter(range(10**9))
    t0 = time.perf_counter()
    deadline = t0 + seconds
    last = t0

    async def client() -> None:
        nonlocal last
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            i = next(counter)
            s = time.perf_counter()
            try:
                ok = await one(i)
            except Exception as e:  # noqa: BLE001 - counted, first one reported
                ok = False
                cell.first_error = cell.first_error or f"{type(e).__name__}: {str(e)[:300]}"
            end = time.perf_counter()
            if ok:
                cell.latencies_ms.append((end - s) * 1000)
                last = max(last, end)
            else:
                cell.errors += 1

    l0 = os.getloadavg()[0]
    await asyncio.gather(*(client() for _ in range(cell.clients)))
    cell.elapsed_s = last - t0
    cell.load = (l0, os.getloadavg()[0])
    return cell


def _completed(out: Any) -> bool:
    return isinstance(out, dict) and out.get("status") == "completed"


# -- 1. bare library in-process -----------------------------------------------------------------
class Bare:
    """The support graph invoked directly in this process (keel's Runtime and pooled PostgresSaver)."""

    def __init__(self, rt: Any, supply: Supply) -> None:
        self.graph, self.context, self.supply = rt.graph("support"), rt.context("support"), supply
        self.lock = threading.Lock()

    def invoke(self, ticket: dict[str, Any]) -> bool:
        cfg = {"configurable": {"thread_id": str(uuid.uuid4()), "requester": "req"}}
        return _completed(self.graph.invoke({"ticket": ticket}, cfg, context=self.context))

    def warm(self, n: int) -> None:
        self.supply.reserve(n)
        for _ in range(n):
            self.invoke(self.supply.next()[1])

    def measure(self, cell: Cell, seconds: float) -> Cell:
        """``cell.clients`` threads loop for ``seconds``; adds to ``cell`` (a cell may be measured in parts)."""
        n = cell.clients
        self.supply.reserve(int(seconds * 40) + 2 * n)
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        last = [t0]

        def loop() -> None:
            while time.perf_counter() < deadline:
                with self.lock:
                    ticket = self.supply.next()[1]
                s = time.perf_counter()
                try:
                    ok = self.invoke(ticket)
                except Exception as e:  # noqa: BLE001
                    ok = False
                    cell.first_error = cell.first_error or f"{type(e).__name__}: {e}"
                end = time.perf_counter()
                with self.lock:
                    if ok:
                        cell.latencies_ms.append((end - s) * 1000)
                        last[0] = max(last[0], end)
                    else:
                        cell.errors += 1

        l0, c0 = os.getloadavg()[0], time.process_time()
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda _: loop(), range(n)))
        first = cell.elapsed_s == 0
        cell.elapsed_s += last[0] - t0
        cell.cpu_s = (0.0 if first else cell.cpu_s) + time.process_time() - c0
        cell.load = (l0 if first else cell.load[0], os.getloadavg()[0])
        return cell


def _progress(cell: Cell) -> None:
    r = cell.row()
    print(f"  {r['system']:<16} workers={r['workers'] or '-'}x{r['threads_per_worker'] or '-'} clients={r['clients']:<3} runs={r['runs']:<5} "
          f"{r['runs_per_s']:>6.2f} runs/s  p50={r['p50_ms']:.0f} ms p99={r['p99_ms']:.0f} ms  errors={r['errors']}"
          + (f"  ({r['first_error']})" if r["first_error"] else ""), file=sys.stderr, flush=True)


# -- 2./3. over HTTP --------------------------------------------------------------------------------
class Http:
    """One langgraph-sdk async client against a server (keel with API keys, or langgraph dev)."""

    def __init__(self, system: str, url: str, supply: Supply, auth: bool) -> None:
        from langgraph_sdk import get_client

        self.system, self.supply, self.auth = system, supply, auth
        self.client = get_client(url=url, api_key=None, timeout=600)

    async def one(self, _: int = 0) -> bool:
        t, ticket = self.supply.next()
        headers = {"x-api-key": t["req"]} if self.auth else None
        out = await self.client.runs.wait(str(uuid.uuid4()), "support", input={"ticket": ticket},
                                          if_not_exists="create", headers=headers)
        return _completed(out)

    async def warm(self, n: int) -> None:
        """``n`` concurrent runs, not timed (every worker process and thread gets to start)."""
        self.supply.reserve(n)
        await asyncio.gather(*(self.one() for _ in range(n)))

    async def measure(self, cell: Cell, seconds: float, cpu: Callable[[], float]) -> Cell:
        self.supply.reserve(int(seconds * 60) + 2 * cell.clients)
        c0 = cpu()
        await drive(cell, self.one, seconds)
        cell.cpu_s = cpu() - c0
        return cell

    async def close(self) -> None:
        await self.client.aclose()


# -- (c) approval resume under load -----------------------------------------------------------------
async def bench_approvals(url: str, supply: Supply, appr_supply: Supply, n: int, workers: int,
                          background: int) -> list[dict[str, Any]]:
    import httpx
    from langgraph_sdk import get_client

    client = get_client(url=url, api_key=None, timeout=600)
    http = httpx.AsyncClient(base_url=url, timeout=600)
    appr_supply.reserve(n)
    parked = []
    for _ in range(n):
        t, ticket = appr_supply.next()
        tid = str(uuid.uuid4())
        out = await client.runs.wait(tid, "support", input={"ticket": ticket}, if_not_exists="create",
                                     headers={"x-api-key": t["req"]})
        intr = (out.get("__interrupt__") or [{}])[0].get("value") or {}
        if not intr.get("plan_hash"):
            raise RuntimeError(f"{ticket['id']} did not stop for approval: {out.get('status')} {out.get('reason_codes')}")
        parked.append((t, tid, intr["plan_hash"]))

    lat: dict[str, list[float]] = {"POST /approvals/{id}/approve": [], "runs.wait(command=resume)": []}
    errors = 0
    stop = asyncio.Event()
    bg = Cell("keel", workers, background)

    async def bg_one(_: int) -> bool:
        t, ticket = supply.next()
        out = await client.runs.wait(str(uuid.uuid4()), "support", input={"ticket": ticket}, if_not_exists="create",
                                     headers={"x-api-key": t["req"]})
        return _completed(out)

    if background:
        supply.reserve(n * 40 + 200)
        bg_task = asyncio.ensure_future(drive(bg, bg_one, 3600, stop))
        await asyncio.sleep(1.5)  # let the queue fill
    l0 = os.getloadavg()[0]
    for i, (t, tid, plan_hash) in enumerate(parked):
        s = time.perf_counter()
        if i % 2 == 0:
            path = "POST /approvals/{id}/approve"
            r = await http.post(f"/approvals/{tid}/approve", json={"plan_hash": plan_hash, "wait": True},
                                headers={"x-api-key": t["appr"]})
            ok = r.status_code == 200 and _completed(r.json().get("result"))
        else:
            path = "runs.wait(command=resume)"
            out = await client.runs.wait(tid, "support", command={"resume": {
                "decision": "approve", "plan_hash": plan_hash, "reason": "bench"}}, headers={"x-api-key": t["appr"]})
            ok = _completed(out)
        if ok:
            lat[path].append((time.perf_counter() - s) * 1000)
        else:
            errors += 1
        await asyncio.sleep(0.05)
    load = (l0, os.getloadavg()[0])
    if background:
        stop.set()
        await bg_task
    await client.aclose()
    await http.aclose()
    rows = []
    for path, xs in lat.items():
        s = summary(xs)
        rows.append({"workers": workers, "background_clients": background, "path": path, "n": len(xs),
                     "errors": errors, "p50_ms": round(s["p50"], 1), "p99_ms": round(s["p99"], 1),
                     "background_runs_per_s": round(bg.rate, 2) if background else None,
                     "load_avg_1m": [round(x, 2) for x in load]})
        print(f"  approvals workers={workers} background={background} {path}: n={len(xs)} p50={s['p50']:.0f} ms "
              f"p99={s['p99']:.0f} ms errors={errors}", file=sys.stderr, flush=True)
    return rows


# -- main ----------------------------------------------------------------------------------------------
def _langgraph_bin() -> str | None:
    exe = Path(sys.executable).with_name("langgraph")
    return str(exe) if exe.exists() else shutil.which("langgraph")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workers_grid = [int(x) for x in args.workers.split(",")]
    clients_grid = [int(x) for x in args.clients.split(",")]
    out: dict[str, Any] = {"cells": [], "approvals": []}
    with scratch_database(args.pg) as url, tempfile.TemporaryDirectory(prefix="keel-bench-http-") as tmpd:
        tmp = Path(tmpd)
        rt = keel_runtime(url, tmp / "bench-data")
        rt.graph("support")
        from engine.queue import RunQueue

        RunQueue(rt.db).setup()
        supply = Supply(rt, "h", AUTO_TICKETS)
        appr_supply = Supply(rt, "a", APPROVAL_TICKETS)
        out["postgres"] = pg_version(url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "LANGSMITH_", "LANGCHAIN_"))}
        env.update(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(tmp / "data"), KEEL_NOW=NOW_ENV,
                   KEEL_PLAN_SIGNING_KEY=SIGNING_KEY, KEEL_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT),
                   LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false", LANGCHAIN_TRACING_V2="false")
        procs = Procs(tmp, env)
        py = sys.executable
        configs = [(w, wc) for wc in (int(x) for x in args.worker_concurrency.split(",")) for w in workers_grid]
        try:
            bare = Bare(rt, supply)
            await asyncio.to_thread(bare.warm, args.warmup)
            dev = None
            if not args.no_dev:
                exe = _langgraph_bin()
                if exe is None:
                    raise SystemExit("langgraph-cli is missing: pip install -e '.[dev]'")
                port = _free_port()
                # the project's langgraph.json with absolute paths, run from a scratch directory so
                # langgraph dev's own state (.langgraph_api/) stays out of the checkout
                dev_cwd = tmp / "dev"
                dev_cwd.mkdir()
                cfg = json.loads((ROOT / "langgraph.json").read_text())
                cfg["dependencies"] = [str(ROOT)]
                cfg["graphs"] = {g: str(ROOT / spec.removeprefix("./")) for g, spec in cfg["graphs"].items()}
                (dev_cwd / "langgraph.json").write_text(json.dumps(cfg))
                p = procs.start("dev", [exe, "dev", "--port", str(port), "--no-browser", "--no-reload",
                                        "--server-log-level", "WARNING", "--config", str(dev_cwd / "langgraph.json")],
                                cwd=dev_cwd)
                dev_url = f"http://127.0.0.1:{port}"
                await _wait_http(dev_url, p, log=lambda: procs.log_tail("dev"))
                dev = Http("langgraph dev", dev_url, supply, auth=False)
                await dev.warm(args.warmup)
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            p = procs.start("serve", [py, "-m", "cli", "serve", "--port", str(port), "--rate-per-minute", "1e9"])
            await _wait_http(base, p, log=lambda: procs.log_tail("serve"))
            keel = Http("keel", base, supply, auth=True)

            async def with_workers(w: int, wc: int) -> list[str]:
                names = [f"worker{i}" for i in range(w)]
                for name in names:
                    procs.start(name, [py, "-m", "cli", "worker", "--concurrency", str(wc)])
                for name in names:
                    await asyncio.to_thread(procs.wait_ready, name, "keel worker:")
                await keel.warm(max(args.warmup, 2 * w * wc))
                return names

            # grouped by client count, so that the cells compared with each other run minutes
            # apart, not the whole benchmark apart (other load on the machine drifts); the
            # bare reference is measured in two halves, before and after the keel cells
            for n in clients_grid:
                print(f"{n} client(s) …", file=sys.stderr, flush=True)
                bare_cell = Cell("bare in-process", None, n)
                await asyncio.to_thread(bare.measure, bare_cell, args.seconds / 2)
                cells = []
                if dev is not None:
                    cells.append(await dev.measure(Cell("langgraph dev", None, n), args.seconds,
                                                   lambda: procs.cpu(["dev"])))
                    _progress(cells[-1])
                for w, wc in configs:
                    names = await with_workers(w, wc)
                    cells.append(await keel.measure(Cell("keel", w, n, wc), args.seconds,
                                                    lambda: procs.cpu(["serve", *names])))
                    _progress(cells[-1])
                    procs.stop(*names)
                await asyncio.to_thread(bare.measure, bare_cell, args.seconds / 2)
                _progress(bare_cell)
                out["cells"] += [bare_cell.row()] + [c.row() for c in cells]
                _save_partial(args.out, out)
            if dev is not None:
                await dev.close()
                procs.stop("dev")
            if args.approvals:
                for w in workers_grid:
                    names = await with_workers(w, 1)
                    for bg in (0, args.background):
                        try:
                            out["approvals"] += await bench_approvals(base, supply, appr_supply, args.approvals, w, bg)
                        except Exception as e:  # noqa: BLE001 - keep what was measured (e.g. a database restart)
                            out.setdefault("failed", []).append(f"approvals, {w} worker(s), {bg} background: "
                                                                f"{type(e).__name__}: {str(e)[:200]}")
                            print("  " + out["failed"][-1], file=sys.stderr, flush=True)
                    procs.stop(*names)
            await keel.close()
        finally:
            procs.stop()
            rt.close()
    return out


def _save_partial(path: str, out: dict[str, Any]) -> None:
    """What was measured so far (a crash or a database restart midway leaves it behind)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**out, "partial": True}, indent=2))


def report(out: dict[str, Any]) -> str:
    cells = out["cells"]
    lines = [f"Machine: {out['machine']} (server, workers, Postgres {out.get('postgres', '?')}, langgraph dev and "
             f"the load generator all share these cores). {out['versions']}.", ""]
    lines.append("(b) Full support run (fresh thread, ticket → completed) over HTTP with langgraph-sdk, "
                 "and in-process; p50/p99 per run, throughput = completed runs/s.")
    lines.append("")
    rows = [[c["system"], f"{c['workers']} × {c['threads_per_worker']}" if c["workers"] is not None else "–",
             c["clients"], c["runs"], c["errors"],
             c["runs_per_s"], c["p50_ms"], c["p99_ms"],
             c["cpu_ms_per_run"] if c["cpu_ms_per_run"] is not None else "–",
             f"{c['load_avg_1m'][0]:.1f}→{c['load_avg_1m'][1]:.1f}"] for c in cells]
    lines.append(table(["system", "workers × threads", "clients", "runs", "errors", "runs/s", "p50 ms", "p99 ms",
                        "CPU ms/run", "load avg"], rows))
    lines.append("")
    lines.append("CPU ms/run: CPU time of the serving processes per completed run (bare: this process; "
                 "langgraph dev: its process tree; keel: serve + workers); Postgres not included.")
    lines += ["", "Targets:", ""]
    lines += targets(out)
    if out["approvals"]:
        lines += ["", "(c) Approval-resume latency: request → resumed run executed, verified, completed.", ""]
        rows = [[a["workers"], a["background_clients"], a["background_runs_per_s"] or "–", a["path"], a["n"],
                 a["errors"], a["p50_ms"], a["p99_ms"]] for a in out["approvals"]]
        lines.append(table(["workers", "background clients", "background runs/s", "resume via", "n", "errors",
                            "p50 ms", "p99 ms"], rows))
    if out.get("failed"):
        lines += ["", "Not measured: " + "; ".join(out["failed"])]
    return "\n".join(lines)


def targets(out: dict[str, Any]) -> list[str]:
    """The issue's targets, per keel series (threads per worker process)."""
    cells = out["cells"]
    bare1 = next((c for c in cells if c["system"] == "bare in-process" and c["clients"] == 1), None)
    dev = {c["clients"]: c for c in cells if c["system"] == "langgraph dev"}
    res: list[str] = []
    if bare1 is None:
        return res
    for threads in sorted({c["threads_per_worker"] for c in cells if c["system"] == "keel"}):
        keel = [c for c in cells if c["system"] == "keel" and c["threads_per_worker"] == threads]
        res.append(f"keel workers with {threads} thread(s) each:")
        for c in (c for c in keel if c["clients"] == 1):
            r = c["p50_ms"] / bare1["p50_ms"]
            res.append(f"- sequential latency, {c['workers']} worker(s): p50 {c['p50_ms']:.0f} ms vs bare "
                       f"{bare1['p50_ms']:.0f} ms = {r:.2f}× (target ≤ 2×: {'met' if r <= 2 else 'MISSED'}); "
                       f"p99 {c['p99_ms']:.0f} vs {bare1['p99_ms']:.0f} ms = {c['p99_ms'] / bare1['p99_ms']:.2f}×")
        two = [c for c in keel if c["workers"] == 2]
        if two:
            best = max(two, key=lambda c: c["runs_per_s"])
            ok = best["runs_per_s"] >= bare1["runs_per_s"]
            res.append(f"- throughput, 2 workers: {best['runs_per_s']:.1f} runs/s ({best['clients']} clients) vs "
                       f"bare single process {bare1['runs_per_s']:.1f} runs/s (target ≥: {'met' if ok else 'MISSED'})")
        if dev:
            worse = []
            for c in keel:
                d = dev.get(c["clients"])
                if d is not None and (c["runs_per_s"] < d["runs_per_s"] or c["p50_ms"] > d["p50_ms"]):
                    worse.append(f"{c['workers']} worker(s) × {c['clients']} clients ({c['runs_per_s']:.1f} vs "
                                 f"{d['runs_per_s']:.1f} runs/s, p50 {c['p50_ms']:.0f} vs {d['p50_ms']:.0f} ms)")
            n = sum(1 for c in keel if c["clients"] in dev)
            res.append("- never slower than langgraph dev (runs/s and p50 at the same client count): "
                       + (f"met at all {n} cells" if not worse else "MISSED at " + "; ".join(worse)))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="4 s cells, 6 approvals (about 4 minutes)")
    p.add_argument("--seconds", type=float, default=None, help="duration of each cell (default 10, quick 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before each system's cells")
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--approvals", type=int, default=None, help="resumes timed per condition (default 16, quick 6)")
    p.add_argument("--background", type=int, default=8, help="background clients while approvals are timed")
    p.add_argument("--worker-concurrency", default="1,4",
                   help="threads per `keel worker` process, one grid per value (the CLI's default is 1)")
    p.add_argument("--no-dev", action="store_true", help="skip langgraph dev")
    p.add_argument("--pg", default=PG_ADMIN_URL, help="Postgres server (a scratch database is created on it)")
    p.add_argument("--out", default=str(RESULTS / "http.json"))
    args = p.parse_args(argv)
    args.seconds = args.seconds or (4.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (4 if args.quick else 8)
    args.approvals = args.approvals if args.approvals is not None else (6 if args.quick else 16)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    t0 = time.monotonic()
    out = asyncio.run(run(args))
    out["settings"] = {k: getattr(args, k) for k in ("seconds", "warmup", "workers", "clients", "approvals",
                                                     "background", "worker_concurrency", "quick")}
    return finish(out, args.out, report, t0)


if __name__ == "__main__":
    sys.exit(main())
