"""Test-only fault injection for the fault suite: ``keel worker --import support.faults_hooks``.

Everything is armed per thread or per tenant through files in ``$KEEL_FAULTS_DIR``, so
the tests of one module share a cluster without stepping on each other:

``stop.<THREAD>.<POINT>``
    The first worker that reaches POINT on THREAD writes its pid into
    ``hit.<THREAD>.<POINT>`` and sleeps, for the test to SIGKILL it there. POINT is

    * ``enter:<node>``: ``node`` is about to run and the checkpoint written after the
      node before it is durable (the worker polls the checkpoint store for it): the
      process dies between two nodes, after the first one's checkpoint;
    * ``effect:<tool>``: the side effect of ``tool`` has committed (with its ledger row)
      but the checkpoint after EXECUTE_ACTION has not;
    * ``finish``: the graph has finished (every checkpoint written) but the run's outcome
      is not yet recorded in ``api_runs``.

``pause.<THREAD>.<POINT>`` (content: seconds)
    The first worker there writes ``paused.<THREAD>.<POINT>`` and sleeps that long, then
    carries on (races against a run in a known state), or stops if a stop is armed too.

``tools.<TENANT>.json``: ``{"tool": NAME, "fail": N, "mode": "error" | "timeout"}``
    The first N attempts of tool NAME for TENANT (counted in the database, across
    workers) fail transiently (``TransientToolError``) or sleep past the runner's
    timeout.

``dbfail.<TENANT>`` (content: N)
    The first N database writes that record a model call for TENANT (its ``model_call``
    audit row, or its token charge when the call cost tokens) raise
    ``psycopg.OperationalError``, as during a database restart.

Every node entry is recorded in ``fault_node_entries`` and every attempt of an armed tool
in ``fault_tool_attempts`` (with the run's ``attempts`` and ``available_at`` at that
moment), so tests can prove which nodes ran twice and measure backoff delays.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

_DDL = """
CREATE TABLE IF NOT EXISTS fault_node_entries (
  thread_id TEXT NOT NULL, run_id TEXT, node TEXT NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS fault_tool_counters (
  tenant TEXT NOT NULL, tool TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (tenant, tool)
);
CREATE TABLE IF NOT EXISTS fault_tool_attempts (
  tenant TEXT NOT NULL, tool TEXT NOT NULL, n INTEGER NOT NULL, tool_attempt INTEGER NOT NULL,
  run_id TEXT, run_attempt INTEGER, run_retries INTEGER, run_available_at DOUBLE PRECISION,
  failed INTEGER NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL
)
"""

HANG_S = 300.0
"""How long a stopped worker sleeps (the test SIGKILLs it long before)."""


def _dir() -> Path | None:
    d = os.environ.get("KEEL_FAULTS_DIR")
    return Path(d) if d else None


def _claim(path: Path) -> bool:
    """Create ``path`` with this pid in it; False if it exists (another worker was first)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _stop_here(thread_id: str | None, point: str) -> None:
    """Hang (for a SIGKILL) if ``point`` is armed on ``thread_id`` and nobody hit it yet;
    sleep a while and go on if a pause is armed there."""
    d = _dir()
    if d is None or not thread_id:
        return
    pause = d / f"pause.{thread_id}.{point}"
    if pause.exists() and _claim(d / f"paused.{thread_id}.{point}"):
        time.sleep(float(pause.read_text()))
    if (d / f"stop.{thread_id}.{point}").exists() and _claim(d / f"hit.{thread_id}.{point}"):
        time.sleep(HANG_S)


def _armed(thread_id: str, point: str) -> bool:
    d = _dir()
    return d is not None and any((d / f"{k}.{thread_id}.{point}").exists() for k in ("stop", "pause"))


def _current() -> tuple[str | None, str | None]:
    """``(thread_id, run_id)`` of the graph run executing in this thread, if any."""
    try:
        from langgraph.config import get_config

        cfg = get_config()
    except Exception:
        return None, None
    return (cfg.get("configurable") or {}).get("thread_id"), (cfg.get("metadata") or {}).get("run_id")


def _wait_checkpoint(runtime: Any, thread_id: str, node: str, timeout: float = 10.0) -> None:
    """Block until the thread's latest durable checkpoint names ``node`` as next."""
    deadline = time.monotonic() + timeout
    graph = runtime.graph("support")
    while time.monotonic() < deadline:
        snap = graph.get_state({"configurable": {"thread_id": thread_id}})
        if node in (snap.next or ()):
            return
        time.sleep(0.02)
    raise AssertionError(f"checkpoint before {node} never became durable on {thread_id}")


def _install_nodes(runtime: Any) -> None:
    import graphs.support as gs

    for name in gs.NODES:
        fn = gs.BODIES[name]
        if getattr(fn, "_faults_wrapped", False):
            continue

        def wrap(fn: Any, name: str = name) -> Any:
            @functools.wraps(fn)
            def node(*args: Any, **kwargs: Any) -> Any:
                thread_id, run_id = _current()
                if thread_id:
                    with runtime.db.transaction() as tx:
                        tx.execute("INSERT INTO fault_node_entries (thread_id, run_id, node, pid, at) VALUES (?, ?, ?, ?, ?)",
                                   (thread_id, run_id, name, os.getpid(), time.time()))
                    if _armed(thread_id, f"enter:{name}"):
                        _wait_checkpoint(runtime, thread_id, name)
                        _stop_here(thread_id, f"enter:{name}")
                return fn(*args, **kwargs)

            node._faults_wrapped = True  # type: ignore[attr-defined]
            return node

        gs.BODIES[name] = wrap(fn)  # the builder binds nodes from BODIES


def _install_effects(runtime: Any) -> None:
    from tools.registry import side_effect_tools

    tools = runtime.tools
    real_call = tools.call

    def call(name: str, args: Any, ctx: Any) -> Any:
        res = real_call(name, args, ctx)
        if name in side_effect_tools():
            _stop_here(_current()[0], f"effect:{name}")
        return res

    tools.call = call


def _install_finish() -> None:
    from engine.queue import RunQueue

    if getattr(RunQueue.finish, "_faults_wrapped", False):
        return
    real_finish = RunQueue.finish

    def finish(self: Any, run: dict[str, Any], worker_id: str, status: str, *a: Any, **kw: Any) -> bool:
        if status == "success":
            _stop_here(run["thread_id"], "finish")
        return real_finish(self, run, worker_id, status, *a, **kw)

    finish._faults_wrapped = True  # type: ignore[attr-defined]
    RunQueue.finish = finish  # type: ignore[method-assign]


def _install_tool_faults(runtime: Any) -> None:
    from tools.contracts import TransientToolError

    tools = runtime.tools
    real_attempt = tools._attempt
    db = runtime.db

    def attempt(spec: Any, args: Any, env: Any, digest: str, tool_attempt: int, abandoned: Any) -> Any:
        d = _dir()
        path = d / f"tools.{env.tenant}.json" if d is not None else None
        if path is None or not path.exists():
            return real_attempt(spec, args, env, digest, tool_attempt, abandoned)
        plan = json.loads(path.read_text())
        if spec.name != plan["tool"]:
            return real_attempt(spec, args, env, digest, tool_attempt, abandoned)
        now = time.time()
        with db.transaction() as tx:
            tx.execute("INSERT INTO fault_tool_counters (tenant, tool, n) VALUES (?, ?, 1)"
                       " ON CONFLICT (tenant, tool) DO UPDATE SET n = fault_tool_counters.n + 1",
                       (env.tenant, spec.name))
            n = int(tx.fetchone("SELECT n FROM fault_tool_counters WHERE tenant = ? AND tool = ?",
                                (env.tenant, spec.name))["n"])
            run = tx.fetchone("SELECT run_id, attempts, retries, available_at FROM api_runs WHERE tenant = ?"
                              " AND status = 'running' ORDER BY created_at DESC LIMIT 1", (env.tenant,)) or {}
            fail = n <= int(plan["fail"])
            tx.execute("INSERT INTO fault_tool_attempts (tenant, tool, n, tool_attempt, run_id, run_attempt, run_retries,"
                       " run_available_at, failed, pid, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (env.tenant, spec.name, n, tool_attempt, run.get("run_id"), run.get("attempts"),
                        run.get("retries"), run.get("available_at"), int(fail), os.getpid(), now))
        if fail:
            if plan.get("mode") == "timeout":
                time.sleep(tools.timeout_s + 0.5)  # the runner gives up first; this attempt is abandoned
            else:
                raise TransientToolError(f"injected transient failure {n}")
        return real_attempt(spec, args, env, digest, tool_attempt, abandoned)

    tools._attempt = attempt


def _install_db_faults(runtime: Any) -> None:
    import psycopg

    tokens, audit = runtime.tokens, runtime.audit
    real_charge, real_append = tokens.charge, audit.append
    db = runtime.db

    def fail_if_armed(tenant: str) -> None:
        d = _dir()
        armed = d / f"dbfail.{tenant}" if d is not None else None
        if armed is not None and armed.exists():
            with db.transaction() as tx:
                tx.execute("INSERT INTO fault_tool_counters (tenant, tool, n) VALUES (?, 'db:charge', 1)"
                           " ON CONFLICT (tenant, tool) DO UPDATE SET n = fault_tool_counters.n + 1", (tenant,))
                n = int(tx.fetchone("SELECT n FROM fault_tool_counters WHERE tenant = ? AND tool = 'db:charge'",
                                    (tenant,))["n"])
            if n <= int(armed.read_text()):
                raise psycopg.OperationalError("injected: server closed the connection unexpectedly")

    def charge(tenant: str, *args: Any, **kwargs: Any) -> Any:
        fail_if_armed(tenant)
        return real_charge(tenant, *args, **kwargs)

    def append(tenant: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("data") or {}
        if kind == "model_call" and not data.get("error"):  # the bookkeeping of a call that answered
            fail_if_armed(tenant)
        return real_append(tenant, kind, *args, **kwargs)

    tokens.charge = charge
    audit.append = append


def keel_install(runtime: Any) -> None:
    """Called by ``keel serve|worker --import support.faults_hooks`` before the graphs compile."""
    runtime.db.executescript(_DDL)
    _install_nodes(runtime)
    _install_effects(runtime)
    _install_finish()
    _install_tool_faults(runtime)
    _install_db_faults(runtime)
