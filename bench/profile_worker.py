"""(h) Where keel's CPU goes in a run: the worker path of bench.capacity, for a profiler.

    python -m bench.profile_worker --runs 220 [--sql]                 # the load, timed
    python -m bench.profile_worker --runs 220 --bare                  # the same tickets, bare graph
    py-spy record --gil --format raw -r 250 -o bench/results/worker.raw -- \\
        python -m bench.profile_worker --runs 220                     # a CPU profile of it
    python -m bench.profile_worker --aggregate bench/results/worker.raw [--top 40]

The load is bench.capacity's first case: one scratch database, the 11 demo tickets that
complete without approval (a fresh demo tenant per cycle), each queued as the API queues it
and claimed, leased, executed and finished by ``Worker.run_one`` in this process. It prints
keel's CPU ms and the server's transactions per ticket; ``--sql`` also attributes every
transaction and statement to the keel (or LangGraph) function that issued it
(``bench/results/worker-sql.txt``; the attribution costs CPU, so time without it).
``--bare`` runs the same tickets on the bare graph instead: ``Runtime.graph("support")``
invoked in this process with a pooled ``PostgresSaver`` and no queue, lease, worker or run
span (bench.http's "bare in-process"), the reference of keel issue #13's CPU target.

``--aggregate`` reads py-spy's collapsed stacks (``--gil``: only samples of the thread
holding the GIL, i.e. Python CPU, not threads waiting on the database) and writes
``bench/results/worker-profile.txt``: self time by function, inclusive time by keel
function, and each sample's owner (the innermost frame in keel's code or LangGraph's).
py-spy is a dev tool here (``pip install py-spy``), not a keel dependency.
"""

from __future__ import annotations

import argparse
import collections
import re
import resource
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import AUTO_TICKETS, RESULTS, keel_runtime, load_tenant, scratch_database

_KEEL = ("engine/", "keel/", "guards/", "tools/", "nodes/", "gateway/", "graphs/")
"""py-spy's short file names of keel's code."""
_LANGGRAPH = {"pregel", "_internal", "postgres", "channels", "graph", "serde", "checkpoint", "store", "managed",
              "langgraph"}
"""py-spy's short file names (first part) of LangGraph's code."""
_FRAME = re.compile(r"^(.*) \((.*?):(\d+)\)$")

_COMPONENTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # (what it is, function-name prefixes, file prefixes): a sample goes to the innermost match
    ("checkpoint writes: LangGraph's PostgresSaver + keel's lease fence", ("LeaseFencedSaver.put",), ()),
    ("checkpoint reads (get_state, the run's first read)", ("Pregel.get_state", "PostgresSaver.get_tuple"), ()),
    ("audit chain appends (keel/audit.py: redact, hash, 3 statements)", ("AuditLog.",), ()),
    ("span store writes (writer thread: redact, JSON, INSERT)", ("SpanStore.write", "_Writer."), ()),
    ("spans made: node callbacks, model/tool/policy spans (OpenTelemetry)",
     ("NodeSpans.", "record_span", "run_span", "tool_span", "trace_model_call", "TracedJudge.", "tracer"),
     ("trace/", "sdk/")),
    ("run recordings (engine/recordings.py: digests, rows)", ("RunRecordings.", "Recorder.", "digest",
                                                          "model_input_digest", "tool_input_digest",
                                                          "read_input_digest"), ()),
    ("injection screen (guards/injection.py)", (), ("guards/injection.py",)),
    ("DLP redaction (guards/dlp.py)", (), ("guards/dlp.py",)),
    ("token budgets and quotas (guards/budgets.py)", (), ("guards/budgets.py",)),
    ("policy engine, plan signing (guards/policy.py, keel/plan.py, keel/keys.py)", (),
     ("guards/policy.py", "guards/pack.py", "keel/plan.py", "keel/keys.py")),
    ("tool runner, ledger, tool cache (tools/runner.py, tools/cache.py)", ("ToolRunner.",), ("tools/cache.py",)),
    ("back-office reads and tools' bodies (tools/)", (), ("tools/",)),
    ("model gateway + local rules (gateway/)", (), ("gateway/",)),
    ("customer memory (engine/memory.py, LangGraph store)", (), ("engine/memory.py", "engine/store.py")),
    ("queue: claim, lease, heartbeats, finish, events (engine/queue/)", (), ("engine/queue/",)),
    ("run versions, releases, after-run hooks (engine/)", (),
     ("engine/versions.py", "engine/releases.py", "engine/review.py", "engine/webhooks.py")),
)
"""The areas of the component table, most specific first within a stack (innermost match)."""


def _component(frames: list[tuple[str, str]]) -> str:
    for fn, file in reversed(frames):
        for label, names, files in _COMPONENTS:
            if (names and fn.startswith(names)) or (files and file.startswith(files)):
                return label
    for _fn, file in reversed(frames):
        if file.startswith(("nodes/", "graphs/")):
            return "node bodies otherwise (nodes/: pydantic state, ticket parsing, plans)"
        if file.split("/")[0] in _LANGGRAPH:
            return "LangGraph's loop (scheduling, channels, serializer, callbacks)"
        if file.startswith(_KEEL):
            return f"other keel code ({file.split('/')[0]}/)"
    return "other (pool, threads, stdlib)"


def _site() -> str:
    """The innermost keel or LangGraph frame of the current stack."""
    for f in reversed(traceback.extract_stack(limit=40)[:-2]):
        fn = f.filename
        if "/psycopg" in fn or fn.endswith(("contextlib.py", "keel/db.py", "profile_worker.py")) or "/tenacity" in fn:
            continue
        if "site-packages/langgraph" in fn or any(f"/{k}" in fn for k in _KEEL):
            short = fn.split("site-packages/")[-1] if "site-packages" in fn else "/".join(fn.split("/")[-2:])
            return f"{short}:{f.name}"
    return "?"


@contextmanager
def _sql_attribution(xacts: collections.Counter[str], stmts: collections.Counter[str]) -> Any:
    """Count transactions (a ``transaction()`` begun, or a statement in autocommit outside
    one) and statements by the function that issued them."""
    import psycopg
    from psycopg import pq

    conn_cls, cur_cls = psycopg.Connection, psycopg.Cursor
    orig_tx, orig_exec, orig_many = conn_cls.transaction, cur_cls.execute, cur_cls.executemany
    orig_pipe = conn_cls.pipeline

    @contextmanager
    def pipeline(self: Any) -> Any:
        # an autocommit pipeline's statements up to its Sync are one implicit transaction
        if self._pipeline is None and self.autocommit and self.info.transaction_status == pq.TransactionStatus.IDLE:
            xacts[_site()] += 1
        with orig_pipe(self) as p:
            yield p

    def idle(conn: Any) -> bool:
        return (conn.info.transaction_status == pq.TransactionStatus.IDLE and conn.autocommit
                and not getattr(conn, "_pipeline", None))

    @contextmanager
    def transaction(self: Any, *a: Any, **k: Any) -> Any:
        if self.info.transaction_status == pq.TransactionStatus.IDLE and self._pipeline is None:
            xacts[_site()] += 1
        with orig_tx(self, *a, **k) as t:
            yield t

    def execute(self: Any, query: Any, *a: Any, **k: Any) -> Any:
        stmts[_site()] += 1
        if idle(self.connection):
            xacts[_site()] += 1
        return orig_exec(self, query, *a, **k)

    def executemany(self: Any, query: Any, *a: Any, **k: Any) -> Any:
        stmts[_site()] += 1
        if idle(self.connection):
            xacts[_site()] += 1
        return orig_many(self, query, *a, **k)

    conn_cls.transaction, cur_cls.execute, cur_cls.executemany = transaction, execute, executemany  # type: ignore[method-assign]
    conn_cls.pipeline = pipeline  # type: ignore[method-assign]
    try:
        yield
    finally:
        conn_cls.transaction, cur_cls.execute, cur_cls.executemany = orig_tx, orig_exec, orig_many  # type: ignore[method-assign]
        conn_cls.pipeline = orig_pipe  # type: ignore[method-assign]


def run_load(runs: int, sql: bool, bare: bool = False) -> str:
    """Execute ``runs`` tickets on keel's worker path (``bare``: on the bare graph); a summary
    (and the SQL attribution)."""
    import uuid

    from bench.capacity import Counters, _enqueue, _postgres_cpu_s
    from engine.queue import RunQueue
    from engine.worker import Worker

    xacts: collections.Counter[str] = collections.Counter()
    stmts: collections.Counter[str] = collections.Counter()
    with scratch_database() as url, tempfile.TemporaryDirectory() as d:
        rt = keel_runtime(url, Path(d))
        q = RunQueue(rt.db).setup()
        w = Worker(rt, q, worker_id="profile")
        tenants = [load_tenant(rt, f"cap{i:04d}") for i in range(runs // len(AUTO_TICKETS) + 2)]
        _enqueue(q, "cap0000", tenants[-1]["T-1"] | {"tenant": "cap0000"})
        while w.run_one():  # warm-up: imports, caches, connections
            pass
        tickets = [tenants[i // len(AUTO_TICKETS)][AUTO_TICKETS[i % len(AUTO_TICKETS)]] for i in range(runs)]
        if bare:
            graph, context = rt.graph("support"), rt.context("support")
            graph.invoke({"ticket": tenants[-1]["T-5"] | {"tenant": "cap0000"}},
                         {"configurable": {"thread_id": str(uuid.uuid4()), "requester": "req"}}, context=context)

            def step() -> bool:
                if not tickets:
                    return False
                graph.invoke({"ticket": tickets.pop(0)}, {"configurable": {"thread_id": str(uuid.uuid4()),
                                                                           "requester": "req"}}, context=context)
                return True
        else:
            for i, ticket in enumerate(tickets):
                _enqueue(q, f"cap{i // len(AUTO_TICKETS):04d}", ticket)
            step = w.run_one
        counters = Counters(url)
        before, p0 = counters.read(), _postgres_cpu_s(counters.db)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with _sql_attribution(xacts, stmts) if sql else _nothing():
            done = _measured(step)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        after, p1 = counters.read(), _postgres_cpu_s(counters.db)
        counters.close()
        rt.close()
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    out = (f"{'bare graph' if bare else 'worker path'}: runs {done}: "
           f"{(after['xacts'] - before['xacts']) / runs:.2f} transactions/ticket (server count), "
           f"keel CPU {cpu / runs * 1000:.1f} ms/ticket, its Postgres backends {(p1 - p0) / runs * 1000:.1f} ms/ticket, "
           f"wall {wall / runs * 1000:.1f} ms/ticket"
           + (" (SQL attribution on: CPU inflated)" if sql else ""))
    if sql:
        lines = [out, "", f"transactions per ticket by issuing function (traced total {sum(xacts.values()) / runs:.2f})"]
        lines += [f"{v / runs:7.2f}  {k}" for k, v in xacts.most_common()]
        lines += ["", f"statements per ticket (total {sum(stmts.values()) / runs:.2f})"]
        lines += [f"{v / runs:7.2f}  {k}" for k, v in stmts.most_common()]
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "worker-sql.txt").write_text("\n".join(lines) + "\n")
    return out


@contextmanager
def _nothing() -> Any:
    yield


def _measured(step: Any) -> int:
    """The measured runs (a function of its own: ``--aggregate`` keeps only its stacks, and
    the other threads' — not the set-up, nor the warm-up run's imports)."""
    done = 0
    while step():
        done += 1
    return done


def aggregate(raw: Path, top: int) -> str:
    """py-spy collapsed stacks of :func:`run_load` as three top-N tables (text)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    owner: collections.Counter[str] = collections.Counter()
    area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        n = int(n_s)
        frames = [(m.group(1), m.group(2)) if (m := _FRAME.match(f)) else (f, "") for f in stack.split(";")]
        names = {f[0] for f in frames}
        if "run_load" in names and "_measured" not in names:
            continue  # set-up, warm-up and queueing in the main thread
        total += n
        own[f"{frames[-1][0]} ({frames[-1][1]})"] += n
        for key in {f"{fn} ({file})" for fn, file in frames if file.startswith(_KEEL)}:
            incl[key] += n
        who = "other (pool, threads, stdlib)"
        for _fn, file in reversed(frames):
            if file.startswith(_KEEL):
                who = f"keel {file}"
                break
            if file.split("/")[0] in _LANGGRAPH:
                who = "LangGraph"
                break
        owner[who] += n
        area[_component(frames)] += n

    def block(title: str, c: collections.Counter[str]) -> str:
        return f"== {title} ==\n" + "\n".join(f"{100 * v / total:5.1f}%  {k}" for k, v in c.most_common(top))

    return "\n\n".join([f"py-spy samples on the worker path: {total} ({raw})",
                        block("by area (each sample to the innermost area of its stack)", area),
                        block("self time by function (leaf frame)", own),
                        block("inclusive time by keel function", incl),
                        block("owner: innermost keel file or LangGraph", owner)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=220, help="tickets to execute")
    p.add_argument("--sql", action="store_true", help="attribute transactions and statements to their callers")
    p.add_argument("--bare", action="store_true", help="the same tickets on the bare graph (no queue, no worker)")
    p.add_argument("--aggregate", type=Path, help="a py-spy --format raw file to summarize instead")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--out", type=Path, default=None, help="where --aggregate writes (default bench/results/worker-profile.txt)")
    args = p.parse_args(argv)
    if args.aggregate:
        text = aggregate(args.aggregate, args.top)
        out = args.out or RESULTS / "worker-profile.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(text)
        return 0
    print(run_load(args.runs, args.sql, args.bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
