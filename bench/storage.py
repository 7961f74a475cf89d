"""(d) Checkpoint storage per run, its growth, and ``keel prune`` keeping it bounded.

    python -m bench.storage [--runs 10000] [--interval 1000] [--bounded-runs 2500]

On a scratch Postgres database (``keel_bench_<hex>``, dropped afterwards), keel's support
graph runs the 30 demo tickets over and over (a fresh demo tenant per cycle of 30, so
every cycle takes the same paths: 20 complete, 5 escalate, 5 park at their approval
interrupt), each on a fresh thread, with keel's default durability.

1. Growth: every ``--interval`` runs, the rows of LangGraph's checkpoint tables
   (``checkpoints``, ``checkpoint_writes``, ``checkpoint_blobs``) and their bytes on disk
   (``pg_total_relation_size``: heap + TOAST + indexes), with bytes per run. Then bytes
   per thread from the rows themselves (``pg_column_size`` of each row, summed per thread)
   for finished and for waiting threads.
2. ``keel prune --keep-latest`` and then ``keel prune --ttl 0`` (the real CLI, in a
   subprocess): rows and bytes before and after each. PostgreSQL does not give deleted
   rows' space back on DELETE: plain ``VACUUM`` (what autovacuum does) makes it reusable,
   ``VACUUM FULL`` returns it, which shows the real bytes left. The runs waiting for
   approval keep every row, and one of them is approved afterwards.
3. Bounded: ``--bounded-runs`` more runs of the tickets that finish, with ``keel prune
   --ttl 0`` and a plain ``VACUUM`` after every interval, as a cron job would do it:
   the tables stop growing, because pruned space is reused.

``--ttl 0`` stands in for a real TTL such as 30 days: with it the store holds the runs
that finished within the TTL (each at its keep-latest or full size) plus the runs waiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    PG_ADMIN_URL, ROOT, expected, keel_runtime, load_tenant, machine, pg_version, scratch_database, table, versions,
)

TABLES = ("checkpoints", "checkpoint_writes", "checkpoint_blobs")


def _server_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.OperationalError,)


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def wait_for_server(url: str, seconds: float = 120) -> None:
    """Block until the server accepts connections again (other jobs may restart it)."""
    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=3) as c:
                c.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def retrying(url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, again after the server comes back if it went away meanwhile."""
    for attempt in range(5):
        try:
            return fn(*args, **kwargs)
        except _server_errors():
            if attempt == 4:
                raise
            print("  … the database server went away; waiting for it", file=sys.stderr)
            wait_for_server(url)


def measure(url: str) -> dict[str, int]:
    """Rows and on-disk bytes of the checkpoint tables."""
    import psycopg

    out: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as c:
        for t in TABLES:
            out[f"{t}_rows"] = c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            out[f"{t}_bytes"] = c.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
            out[f"{t}_index_bytes"] = c.execute("SELECT pg_indexes_size(%s)", (t,)).fetchone()[0]
        out["threads"] = c.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
    out["rows"] = sum(out[f"{t}_rows"] for t in TABLES)
    out["bytes"] = sum(out[f"{t}_bytes"] for t in TABLES)
    out["index_bytes"] = sum(out[f"{t}_index_bytes"] for t in TABLES)
    return out


def per_thread_bytes(url: str) -> dict[str, dict[str, float]]:
    """Bytes of each thread's rows (``pg_column_size`` of the row), by run-index status."""
    import psycopg

    sql = """
    SELECT coalesce(r.status, '-') AS status, x.thread_id, sum(x.b) AS bytes, sum(x.n) AS rows FROM (
        SELECT thread_id, pg_column_size(c.*) AS b, 1 AS n FROM checkpoints c
        UNION ALL SELECT thread_id, pg_column_size(w.*), 1 FROM checkpoint_writes w
        UNION ALL SELECT thread_id, pg_column_size(bl.*), 1 FROM checkpoint_blobs bl
    ) x LEFT JOIN run_index r ON r.thread_id = x.thread_id
    GROUP BY r.status, x.thread_id
    """
    groups: dict[str, list[tuple[int, int]]] = {}
    with psycopg.connect(url, autocommit=True) as c:
        for status, _tid, b, n in c.execute(sql).fetchall():
            key = ("waiting (awaiting_approval)" if status == "awaiting_approval"
                   else f"finished ({status})" if status in ("completed", "escalated", "rejected")
                   else f"not finished ({status})")
            groups.setdefault(key, []).append((int(b), int(n)))
    return {k: {"threads": len(v), "bytes_mean": statistics.fmean(b for b, _ in v),
                "bytes_p50": statistics.median(b for b, _ in v), "bytes_max": max(b for b, _ in v),
                "rows_mean": statistics.fmean(n for _, n in v)} for k, v in sorted(groups.items())}


def vacuum(url: str, full: bool = False) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        for t in TABLES:
            c.execute(f"VACUUM {'FULL ' if full else ''}{t}")


def keel_prune(url: str, data_dir: Path, *args: str) -> tuple[str, float]:
    """Run the real ``keel prune`` against the benchmark database; its output and seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(data_dir), KEEL_PLAN_SIGNING_KEY="bench-key",
               KEEL_LOG_LEVEL="WARNING")
    t0 = time.perf_counter()
    for attempt in range(3):  # prune is safe to repeat; the server may restart under it
        out = subprocess.run([sys.executable, "-m", "cli", "prune", *args], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=3600)
        if out.returncode == 0:
            break
        if attempt == 2 or "OperationalError" not in out.stderr and "server" not in out.stderr:
            raise SystemExit(f"keel prune {' '.join(args)} failed:\n{out.stderr[-3000:]}")
        print("  … keel prune lost the database server; waiting for it, then pruning again", file=sys.stderr)
        wait_for_server(url)
    took = time.perf_counter() - t0
    return out.stdout.strip(), took


class Runner:
    """Runs demo tickets on fresh threads, a fresh tenant per cycle."""

    def __init__(self, rt: Any, ticket_ids: list[str], url: str) -> None:
        self.rt, self.ids, self.queue, self.cycle, self.runs, self.url = rt, ticket_ids, [], 0, 0, url
        self.graph, self.context = rt.graph("support"), rt.context("support")
        self.waiting: list[tuple[str, str]] = []  # (tenant, thread)
        self.seconds = 0.0
        self.unexpected = 0
        self.interrupted = 0
        """Runs cut off by a database-server restart (re-run on a new thread; the cut-off
        thread stays, unfinished, and prune leaves it alone)."""
        self.want = {tid: e["status"] for tid, e in expected().items()}

    def run(self, n: int) -> None:
        for _ in range(n):
            if not self.queue:
                self.cycle += 1
                tenant = f"s{self.cycle}"
                tickets = retrying(self.url, load_tenant, self.rt, tenant, principals=[("boss", "approver")])
                self.queue = [(tenant, tickets[t]) for t in self.ids]
            tenant, ticket = self.queue.pop(0)
            thread = str(uuid.uuid4())
            t0 = time.perf_counter()
            try:
                state = self.graph.invoke({"ticket": ticket}, {"configurable": {"thread_id": thread, "requester": "bench"}},
                                          context=self.context)
            except Exception as e:  # noqa: BLE001 - only a server restart is expected here
                if not any(isinstance(x, _server_errors()) for x in _chain(e)):
                    raise
                self.interrupted += 1
                print("  … a run was cut off by the database server going away; waiting for it", file=sys.stderr)
                wait_for_server(self.url)
                self.queue.insert(0, (tenant, ticket))
                continue
            self.seconds += time.perf_counter() - t0
            self.runs += 1
            if state.get("status") != self.want[ticket["id"]]:
                self.unexpected += 1
            if state.get("status") == "awaiting_approval":
                self.waiting.append((tenant, thread))


def row_of(label: str, runs: int, m: dict[str, int], per_run: bool = True) -> list[Any]:
    return [label, runs, m["threads"], m["checkpoints_rows"], m["checkpoint_writes_rows"], m["checkpoint_blobs_rows"],
            m["bytes"] / 2**20, m["index_bytes"] / 2**20, (m["bytes"] / runs) if runs and per_run else "-"]


HEAD = ["after", "runs", "threads", "checkpoints", "writes", "blobs", "MiB on disk", "of which indexes", "bytes/run"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10_000, help="runs before pruning (default 10000)")
    p.add_argument("--interval", type=int, default=0, help="print a row every N runs (default runs/10)")
    p.add_argument("--bounded-runs", type=int, default=-1, help="runs of phase 3 (default runs/4; 0 skips it)")
    p.add_argument("--pg", default=PG_ADMIN_URL, help="server and maintenance database (default %(default)s)")
    args = p.parse_args(argv)
    interval = args.interval or max(1, args.runs // 10)
    bounded = args.runs // 4 if args.bounded_runs < 0 else args.bounded_runs
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("keel").setLevel(logging.WARNING)

    with scratch_database(args.pg) as url, tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        rt = keel_runtime(url, Path(tmp))
        rt.checkpointer
        print(f"# bench.storage: {machine()}; PostgreSQL {pg_version(url)}; {versions()}")
        all_ids = [f"T-{i}" for i in range(1, 31)]
        runner = Runner(rt, all_ids, url)

        # 1. growth
        print(f"\n## 1. growth over {args.runs:,} runs (30 demo tickets per cycle: 20 complete, 5 escalate, "
              "5 wait for approval)\n")
        rows = [row_of("start", 0, retrying(url, measure, url))]
        while runner.runs < args.runs:
            runner.run(min(interval, args.runs - runner.runs))
            rows.append(row_of(f"{runner.runs:,} runs", runner.runs, retrying(url, measure, url)))
            print(f"  … {runner.runs:,} runs, {runner.runs / runner.seconds:.1f} runs/s", file=sys.stderr)
        print(table(HEAD, rows))
        grown = retrying(url, measure, url)
        print(f"\nruns: {runner.runs:,} in {runner.seconds:.0f} s of graph time ({runner.runs / runner.seconds:.1f} runs/s); "
              f"{len(runner.waiting):,} waiting for approval; {runner.unexpected} ended other than the demo expects; "
              f"{runner.interrupted} cut off by a database-server restart (re-run on new threads)")
        print(f"on disk per run: {grown['bytes'] / runner.runs:,.0f} bytes (checkpoints "
              f"{grown['checkpoints_bytes'] / runner.runs:,.0f}, writes {grown['checkpoint_writes_bytes'] / runner.runs:,.0f}, "
              f"blobs {grown['checkpoint_blobs_bytes'] / runner.runs:,.0f})\n")
        pt = retrying(url, per_thread_bytes, url)
        print(table(["threads by status", "threads", "rows/thread", "bytes/thread mean", "p50", "max"],
                    [[k, v["threads"], v["rows_mean"], v["bytes_mean"], v["bytes_p50"], v["bytes_max"]] for k, v in pt.items()]))

        # 2. prune
        print("\n## 2. keel prune\n")
        waiting_ids = [t for _, t in runner.waiting]
        from engine.retention import checkpoint_rows

        waiting_rows = retrying(url, checkpoint_rows, rt, waiting_ids)
        steps: list[list[Any]] = [row_of("before prune", runner.runs, grown)]
        out, took = keel_prune(url, Path(tmp), "--keep-latest")
        print(f"$ keel prune --keep-latest   ({took:.1f} s)\n{out}\n")
        steps.append(row_of("prune --keep-latest", runner.runs, retrying(url, measure, url)))
        retrying(url, vacuum, url)
        steps.append(row_of("  + VACUUM", runner.runs, retrying(url, measure, url)))
        retrying(url, vacuum, url, full=True)
        kept = retrying(url, measure, url)
        steps.append(row_of("  + VACUUM FULL", runner.runs, kept))
        print(table(HEAD, steps))
        pt = retrying(url, per_thread_bytes, url)
        print()
        print(table(["threads by status, after keep-latest", "threads", "rows/thread", "bytes/thread mean", "p50", "max"],
                    [[k, v["threads"], v["rows_mean"], v["bytes_mean"], v["bytes_p50"], v["bytes_max"]] for k, v in pt.items()]))

        steps = []
        out, took = keel_prune(url, Path(tmp), "--ttl", "0")
        print(f"\n$ keel prune --ttl 0   ({took:.1f} s)\n{out}\n")
        steps.append(row_of("prune --ttl 0", runner.runs, retrying(url, measure, url)))
        retrying(url, vacuum, url, full=True)
        steps.append(row_of("  + VACUUM FULL", runner.runs, retrying(url, measure, url)))
        print(table(HEAD, steps))
        same = retrying(url, checkpoint_rows, rt, waiting_ids) == waiting_rows
        print(f"\nwaiting threads: {len(waiting_ids):,}, their rows before and after both prunes "
              f"{'identical' if same else 'CHANGED'} ({waiting_rows})")
        if runner.waiting:
            tenant, thread = runner.waiting[0]
            print(f"approving one of them after the prunes: {retrying(url, approve, rt, tenant, thread)}")

        # 3. bounded under continued load
        if bounded:
            finishing = [t for t in all_ids if expected()[t]["status"] != "awaiting_approval"]
            runner2 = Runner(rt, finishing, url)
            runner2.cycle = runner.cycle + 1000
            step = max(1, bounded // 5)
            print(f"\n## 3. {bounded:,} more runs of the 25 tickets that finish; after every {step:,}: "
                  "keel prune --ttl 0 and VACUUM (not FULL)\n")
            base = retrying(url, measure, url)
            rows = [row_of("start", 0, base, per_run=False)]
            grow_rows = []
            while runner2.runs < bounded:
                runner2.run(min(step, bounded - runner2.runs))
                grow_rows.append(retrying(url, measure, url))
                keel_prune(url, Path(tmp), "--ttl", "0")
                retrying(url, vacuum, url)
                m = retrying(url, measure, url)
                rows.append(row_of(f"{runner2.runs:,} runs, before prune", runner2.runs, grow_rows[-1], per_run=False))
                rows.append(row_of(f"{runner2.runs:,} runs, pruned", runner2.runs, m, per_run=False))
            print(table(HEAD, rows))
            pruned = [r for r in rows[2::2]]
            sizes = [(base["bytes"], base["index_bytes"])] + [(r[6] * 2**20, r[7] * 2**20) for r in pruned]
            total = ", ".join(f"{(b[0] - a[0]) / 2**20:+.2f}" for a, b in zip(sizes, sizes[1:]))
            index = ", ".join(f"{(b[1] - a[1]) / 2**20:+.2f}" for a, b in zip(sizes, sizes[1:]))
            unpruned = (grow_rows[0]["bytes"] - base["bytes"]) / 2**20
            print(f"\non disk after each prune + VACUUM, change per {step:,} runs: {total} MiB, of which indexes "
                  f"{index} MiB; without pruning each {step:,} runs add {unpruned:.2f} MiB. Rows return to the same "
                  "count after every prune and VACUUM lets new rows reuse the heap; what still grows, more slowly "
                  "each interval, is index pages VACUUM cannot merge (REINDEX or VACUUM FULL returns them)")
        rt.close()
    return 0


def approve(rt: Any, tenant: str, thread: str) -> str:
    from langgraph.types import Command

    from engine.approvals import pending_approval, validate_resume

    request = pending_approval(rt, thread)
    if request is None:
        return "NOT PENDING"
    value = validate_resume(rt, thread, rt.principals.get(tenant, "boss"),
                            {"decision": "approve", "plan_hash": request["plan_hash"]})
    state = rt.graph("support").invoke(Command(resume=value), {"configurable": {"thread_id": thread}},
                                       context=rt.context("support"))
    return f"thread {thread[:8]}… {state.get('status')}"


if __name__ == "__main__":
    sys.exit(main())
