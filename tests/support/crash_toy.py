"""A toy graph whose node SIGKILLs the worker process running it: ``toy_crash``.

``keel worker --import support.crash_toy`` registers it (in-process tests call
:func:`register`). The node kills its process only where ``$KEEL_TEST_CRASH_DIR`` is set
(the worker subprocesses of a test, never the pytest process) and while the file
``crash.<THREAD>`` exists there; each kill is recorded as ``crashed.<THREAD>.<PID>``.
Without the file the node returns ``{"done": True}``, so a retried run can finish.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph


class CrashState(TypedDict, total=False):
    done: bool


def crash_dir() -> Path | None:
    d = os.environ.get("KEEL_TEST_CRASH_DIR")
    return Path(d) if d else None


def build_crash(runtime: Any = None) -> StateGraph:
    """One node that takes its worker down while ``crash.<THREAD>`` is armed."""

    def node(state: CrashState, config: RunnableConfig) -> dict:
        d = crash_dir()
        tid = config["configurable"]["thread_id"]
        if d is not None and (d / f"crash.{tid}").exists():
            (d / f"crashed.{tid}.{os.getpid()}").write_text("")
            os.kill(os.getpid(), signal.SIGKILL)
        return {"done": True}

    g = StateGraph(CrashState)
    g.add_node("crash", node)
    g.add_edge(START, "crash")
    g.add_edge("crash", END)
    return g


def register() -> None:
    from engine.registry import GRAPH_BUILDERS

    GRAPH_BUILDERS.setdefault("toy_crash", lambda runtime=None: build_crash(runtime))


def keel_install(runtime: Any) -> None:
    register()
