"""The graphs keel serves, by graph id (the ids of ``langgraph.json``).

The API lists one assistant per id (:func:`graph_ids`), workers compile runs' graphs from
here (``engine.runtime.Runtime.graph``), and ``keel serve|worker --import MODULE`` lets an
extension add its own (``GRAPH_BUILDERS[graph_id] = builder``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from langgraph.graph import StateGraph

from graphs.support import build_support_graph
from keel.config import PACKAGE_DIR

__all__ = ["GRAPH_BUILDERS", "GraphBuilder", "graph_ids", "LANGGRAPH_JSON"]

GraphBuilder = Callable[..., StateGraph]
"""``builder(runtime=RUNTIME)``: the uncompiled graph; ``runtime`` is the engine's
:class:`~engine.runtime.Runtime` (an extension's graph may keep tables in its database)."""


def _support(runtime: Any = None) -> StateGraph:
    # the support graph needs nothing from the runtime when it is built: its nodes get
    # their dependencies as each run's context
    return build_support_graph()


GRAPH_BUILDERS: dict[str, GraphBuilder] = {"support": _support}
"""Graph id → builder; the API and workers compile from here."""

LANGGRAPH_JSON = PACKAGE_DIR.parent / "langgraph.json"
"""The project's LangGraph deployment file; its graph ids come first in listings."""


@lru_cache(maxsize=1)
def _langgraph_json_graphs() -> tuple[str, ...]:
    try:
        return tuple(json.loads(LANGGRAPH_JSON.read_text()).get("graphs", {}))
    except (OSError, ValueError):
        return ()


def graph_ids() -> list[str]:
    """One id per graph of ``langgraph.json`` that keel can build, then registered extras."""
    ids = [g for g in _langgraph_json_graphs() if g in GRAPH_BUILDERS]
    return ids + sorted(g for g in GRAPH_BUILDERS if g not in ids)
