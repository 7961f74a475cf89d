"""Toy graphs for the API tests: slow side effects (kill tests) and transient failures (dead letters).

In-process tests call :func:`register`; ``keel serve|worker --import support.api_toy``
registers them in subprocesses through :func:`keel_install`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

_DDL = """
CREATE TABLE IF NOT EXISTS toy_effects (key TEXT PRIMARY KEY, thread_id TEXT NOT NULL, worker_pid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS toy_attempts (thread_id TEXT NOT NULL, node TEXT NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)
"""


class ToyState(TypedDict, total=False):
    sleep: float
    fail_times: int
    marker: str
    steps: list[str]
    done: bool


def _attempt(db: Any, thread_id: str, node: str) -> int:
    with db.transaction() as tx:
        tx.execute("INSERT INTO toy_attempts (thread_id, node, pid, at) VALUES (?, ?, ?, ?)",
                   (thread_id, node, os.getpid(), time.time()))
        return int(tx.fetchone("SELECT COUNT(*) AS n FROM toy_attempts WHERE thread_id = ? AND node = ?",
                               (thread_id, node))["n"])


def build_slow(runtime: Any) -> StateGraph:
    """start → effect (idempotent insert, then a pause: a kill here loses the step) → finish."""
    db = runtime.db
    db.executescript(_DDL)

    def start(state: ToyState, config: RunnableConfig) -> dict:
        _attempt(db, config["configurable"]["thread_id"], "start")
        return {"steps": ["start"]}

    def effect(state: ToyState, config: RunnableConfig) -> dict:
        tid = config["configurable"]["thread_id"]
        _attempt(db, tid, "effect")
        with db.transaction() as tx:
            tx.execute("INSERT INTO toy_effects (key, thread_id, worker_pid) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
                       (f"{tid}:effect", tid, os.getpid()))
        marker = state.get("marker")
        if not marker or not Path(marker).exists():  # only the first execution pauses
            if marker:
                Path(marker).write_text(str(os.getpid()))
            time.sleep(float(state.get("sleep") or 0))
        return {"steps": state["steps"] + ["effect"]}

    def finish(state: ToyState) -> dict:
        return {"steps": state["steps"] + ["finish"], "done": True}

    g = StateGraph(ToyState)
    g.add_node("start", start)
    g.add_node("effect", effect)
    g.add_node("finish", finish)
    g.add_edge(START, "start")
    g.add_edge("start", "effect")
    g.add_edge("effect", "finish")
    g.add_edge("finish", END)
    return g


def build_flaky(runtime: Any) -> StateGraph:
    """A node that times out for its first ``fail_times`` attempts on a thread."""
    db = runtime.db
    db.executescript(_DDL)

    def call(state: ToyState, config: RunnableConfig) -> dict:
        n = _attempt(db, config["configurable"]["thread_id"], "call")
        if n <= int(state.get("fail_times") or 0):
            raise TimeoutError(f"upstream timed out (attempt {n})")
        return {"steps": ["call"], "done": True}

    g = StateGraph(ToyState)
    g.add_node("call", call)
    g.add_edge(START, "call")
    g.add_edge("call", END)
    return g


def build_broken(runtime: Any) -> StateGraph:
    """A node with a permanent (non-transient) bug."""

    def call(state: ToyState) -> dict:
        raise ValueError("bug")

    g = StateGraph(ToyState)
    g.add_node("call", call)
    g.add_edge(START, "call")
    g.add_edge("call", END)
    return g


TOYS = {"toy_slow": build_slow, "toy_flaky": build_flaky, "toy_broken": build_broken}


def register() -> None:
    from engine.registry import GRAPH_BUILDERS

    for k, v in TOYS.items():
        GRAPH_BUILDERS.setdefault(k, lambda runtime=None, _b=v: _b(runtime))


def keel_install(runtime: Any) -> None:
    register()
