"""The graphs keel serves, by graph id: every graph ``langgraph.json`` names, plus extensions'.

Like LangGraph's server, keel serves the graphs of one ``langgraph.json``
(:mod:`engine.loader` reads it): the file given with ``keel serve|worker|run --config PATH``
(or ``KEEL_LANGGRAPH_CONFIG``), else ``./langgraph.json``, else keel's own. The API lists one
assistant per id (:func:`graph_ids`) and workers build runs' graphs through :func:`build`
on their runtime's checkpointer. ``keel serve|worker --import MODULE`` may add more
(``GRAPH_BUILDERS[graph_id] = builder``; ``builder(runtime=RUNTIME)`` returns a
``StateGraph``).

keel's ``support`` graph is one entry of keel's ``langgraph.json``, written for LangGraph
Studio (``graphs/studio.py:support``: no context schema, a process-wide default context).
When an entry names that Studio entry point, keel serves the same topology declaring its
:class:`~graphs.context.SupportContext` instead, which each run gets from its runtime
(:data:`KEEL_NATIVE`); every other graph is served as written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from langgraph.graph import StateGraph

from engine.loader import GraphConfigError, LoadedGraph, load_graphs
from graphs.supply import build_supply_graph
from graphs.support import build_support_graph
from keel.config import PACKAGE_DIR, get_settings

__all__ = ["GRAPH_BUILDERS", "GraphBuilder", "GraphConfigError", "KEEL_NATIVE", "LANGGRAPH_JSON", "build",
           "config_path", "graph_ids", "is_factory", "loaded", "use_config", "description"]

GraphBuilder = Callable[..., StateGraph]
"""``builder(runtime=RUNTIME)``: the uncompiled graph; ``runtime`` is the engine's
:class:`~engine.runtime.Runtime` (an extension's graph may keep tables in its database)."""


GRAPH_BUILDERS: dict[str, GraphBuilder] = {}
"""Graphs added by extensions (``--import``), by id; a ``langgraph.json`` id wins over one here."""

KEEL_NATIVE: dict[tuple[Path, str], Callable[[], StateGraph]] = {
    # the support graph needs nothing from the runtime when it is built: its nodes get
    # their dependencies as each run's context
    ((PACKAGE_DIR.parent / "graphs" / "studio.py").resolve(), "support"): build_support_graph,
    ((PACKAGE_DIR.parent / "graphs" / "studio.py").resolve(), "supply"): build_supply_graph,
}
"""keel's own Studio entry points (file, attribute) → the builder keel serves in their
place (not imported: the Studio module's process-wide runtime stays unused)."""

LANGGRAPH_JSON = PACKAGE_DIR.parent / "langgraph.json"
"""keel's own deployment file: the one served when neither ``--config`` nor
``KEEL_LANGGRAPH_CONFIG`` names one and the working directory has none."""

_LOCK = threading.RLock()
_LOADED: dict[Path, dict[str, LoadedGraph]] = {}
_ACTIVE: list[Path] = []


def config_path(explicit: Path | str | None = None) -> Path:
    """The ``langgraph.json`` to serve: ``explicit``, else ``KEEL_LANGGRAPH_CONFIG``, else
    ``./langgraph.json``, else keel's own."""
    chosen = explicit or get_settings().langgraph_config
    if chosen:
        return Path(chosen).resolve()
    local = Path("langgraph.json")
    return (local if local.is_file() else LANGGRAPH_JSON).resolve()


def _load(path: Path) -> dict[str, LoadedGraph]:
    with _LOCK:
        if path not in _LOADED:
            _LOADED[path] = load_graphs(path, KEEL_NATIVE)
        return _LOADED[path]


def use_config(explicit: Path | str | None = None) -> Path:
    """Load the graphs of ``langgraph.json`` (:func:`config_path`) and serve them from now on
    in this process; :class:`GraphConfigError` if the file or a graph cannot be loaded."""
    path = config_path(explicit)
    _load(path)
    with _LOCK:
        _ACTIVE[:] = [path]
    return path


def loaded() -> Mapping[str, LoadedGraph]:
    """The graphs of the ``langgraph.json`` in use (loaded on first use)."""
    with _LOCK:
        path = _ACTIVE[0] if _ACTIVE else None
    return _load(path or config_path())


def graph_ids() -> list[str]:
    """One id per graph of ``langgraph.json`` (in its order), then extensions' (sorted)."""
    ids = list(loaded())
    return ids + sorted(g for g in GRAPH_BUILDERS if g not in ids)


def description(graph_id: str) -> str | None:
    """The entry's ``description`` in ``langgraph.json``, if it has one."""
    entry = loaded().get(graph_id)
    return entry.spec.description if entry is not None else None


def is_factory(graph_id: str) -> bool:
    """Whether ``graph_id`` is built by a factory, per run, from the run's config."""
    entry = loaded().get(graph_id)
    return entry is not None and entry.kind == "factory"


def build(graph_id: str, runtime: Any, checkpointer: Any, config: Mapping[str, Any] | None = None) -> Any:
    """Graph ``graph_id`` compiled on ``checkpointer`` (a factory's with ``config``);
    ``KeyError`` if no graph has that id."""
    entry = loaded().get(graph_id)
    if entry is not None:
        return entry.build(checkpointer, config)
    builder = GRAPH_BUILDERS.get(graph_id)
    if builder is None:
        raise KeyError(f"unknown graph {graph_id!r}")
    return builder(runtime=runtime).compile(checkpointer=checkpointer)
