"""Reading ``langgraph.json`` and importing the graphs it names, as LangGraph's server does.

A graph entry is ``"./path/to/file.py:attr"`` (a file, relative to the config file's folder)
or ``"package.module:attr"`` (an importable module), or ``{"path": …, "description": …}``.
The attribute may be

* a compiled graph (any ``Pregel``): keel serves a copy of it on its own checkpointer
  (``Pregel.copy``, as langgraph-api does), so ``interrupt_before``/``after``, retry and
  cache policies, name and context schema are kept;
* a ``StateGraph`` builder: compiled on keel's checkpointer;
* a factory, sync or async, taking nothing or the run's ``RunnableConfig`` and returning
  either of the above: called with each run's config (and once at start-up, to check it).

Local folders named in ``"dependencies"`` (``"."`` by default) go on ``sys.path`` so that
module entries and the graph files' own imports resolve, like an installed project under
``langgraph dev``. Every mistake (no such file, bad JSON, a missing attribute, an object
that is not a graph) is a :class:`GraphConfigError` with one clear sentence.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from langgraph.graph import StateGraph
from langgraph.pregel import Pregel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keel.errors import ConfigError, is_retryable

__all__ = ["GraphConfigError", "GraphSpec", "LoadedGraph", "LanggraphConfig", "read_config", "load_graph",
           "load_graphs", "as_graph"]

log = logging.getLogger("keel.graphs")


class GraphConfigError(ConfigError, ValueError):
    """``langgraph.json`` or a graph it names cannot be loaded; the message says which and why.

    Not retryable: a factory that failed because the database went away is not wrapped in
    one, so the worker retries it (``keel.errors.is_retryable``)."""


class GraphEntry(BaseModel):
    """The dictionary form of a graph entry (``{"path": "./g.py:graph", "description": …}``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    path: str = Field(min_length=3)
    description: str | None = None


class LanggraphConfig(BaseModel):
    """The parts of ``langgraph.json`` keel reads (other keys are LangGraph CLI's and ignored)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    graphs: dict[str, str | GraphEntry] = Field(min_length=1)
    dependencies: list[str] = Field(default_factory=lambda: ["."])


@dataclass(frozen=True)
class GraphSpec:
    """One entry of ``graphs``: where its object lives."""

    graph_id: str
    target: str
    """The entry as written (``./g.py:graph`` or ``pkg.mod:graph``), for messages."""
    attr: str
    path: Path | None = None
    """The resolved file, for a file entry."""
    module: str | None = None
    """The module name, for a module entry."""
    description: str | None = None

    def origin(self) -> tuple[Path | None, str]:
        """``(file, attr)`` of the entry, found without importing it (None: unknown)."""
        if self.path is not None:
            return self.path, self.attr
        try:
            found = importlib.util.find_spec(self.module or "")
        except (ImportError, ValueError):
            found = None
        origin = found.origin if found is not None else None
        return (Path(origin).resolve() if origin else None), self.attr


@dataclass(frozen=True)
class LoadedGraph:
    """A graph entry, imported and classified (``kind``), ready for :meth:`build`."""

    spec: GraphSpec
    kind: Literal["compiled", "builder", "factory"]
    value: Any

    def build(self, checkpointer: Any, config: Mapping[str, Any] | None = None) -> Pregel:
        """The graph compiled on ``checkpointer``; a factory is called with ``config``."""
        value = self.value
        if self.kind == "factory":
            value = _call_factory(self.spec, value, dict(config or {"configurable": {}}))
        return as_graph(self.spec, value, checkpointer)


def as_graph(spec: GraphSpec, value: Any, checkpointer: Any) -> Pregel:
    """``value`` (a compiled graph or a builder) as a graph on ``checkpointer``."""
    if isinstance(value, StateGraph):
        return value.compile(checkpointer=checkpointer, name=spec.graph_id)
    if isinstance(value, Pregel):
        if value.checkpointer not in (None, checkpointer) and not isinstance(value.checkpointer, bool):
            log.warning("graph %s: its own checkpointer %s is replaced by keel's", spec.graph_id,
                        type(value.checkpointer).__name__)
        update: dict[str, Any] = {"checkpointer": checkpointer}
        if value.name == "LangGraph":  # LangGraph's default name: the graph id says more
            update["name"] = spec.graph_id
        return value.copy(update=update)
    raise GraphConfigError(f"graph {spec.graph_id!r} ({spec.target}): expected a compiled graph or a StateGraph, "
                           f"got {type(value).__name__}")


def read_config(path: Path) -> LanggraphConfig:
    """``langgraph.json`` at ``path``, validated."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GraphConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise GraphConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise GraphConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise GraphConfigError(f"{path}: expected a JSON object with a \"graphs\" key")
    try:
        return LanggraphConfig.model_validate(raw)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'top level'}: {err['msg']}" for err in e.errors()[:3])
        raise GraphConfigError(f"{path}: {where}") from None


def specs(path: Path, config: LanggraphConfig) -> list[GraphSpec]:
    """One :class:`GraphSpec` per entry of ``config`` (read from ``path``)."""
    out = []
    for graph_id, entry in config.graphs.items():
        target = entry if isinstance(entry, str) else entry.path
        where, sep, attr = target.rpartition(":")
        if not sep or not where or not attr.isidentifier():
            raise GraphConfigError(f"{path}: graph {graph_id!r}: {target!r} is not './file.py:attr' or 'module:attr'")
        description = entry.description if isinstance(entry, GraphEntry) else None
        if "/" in where or where.endswith(".py"):
            file = Path(where) if Path(where).is_absolute() else path.parent / where
            out.append(GraphSpec(graph_id, target, attr, path=file.resolve(), description=description))
        else:
            out.append(GraphSpec(graph_id, target, attr, module=where, description=description))
    return out


def add_dependencies(path: Path, config: LanggraphConfig) -> None:
    """Put the config's local dependency folders on ``sys.path`` (first come first)."""
    for dep in config.dependencies:
        if not dep.startswith((".", "/")):
            continue  # a package name: installed, not a folder
        folder = str((path.parent / dep).resolve())
        if Path(folder).is_dir() and folder not in sys.path:
            sys.path.insert(0, folder)


_IMPORT_LOCK = threading.Lock()


def _module(spec: GraphSpec) -> ModuleType:
    """Import the entry's module (a file under a name derived from its path, like langgraph-api)."""
    if spec.module is not None:
        try:
            return importlib.import_module(spec.module)
        except ImportError as e:
            raise GraphConfigError(f"graph {spec.graph_id!r}: cannot import {spec.module!r}: {e}") from None
    assert spec.path is not None
    if not spec.path.is_file():
        raise GraphConfigError(f"graph {spec.graph_id!r}: {spec.path}: no such file")
    name = "keel_graph__" + "__".join(spec.path.with_suffix("").parts[-3:]).replace("-", "_").replace(" ", "_")
    with _IMPORT_LOCK:
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(spec.path):
            return sys.modules[name]
        found = importlib.util.spec_from_file_location(name, spec.path)
        if found is None or found.loader is None:
            raise GraphConfigError(f"graph {spec.graph_id!r}: {spec.path} is not a Python file")
        module = importlib.util.module_from_spec(found)
        sys.modules[name] = module
        try:
            found.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise GraphConfigError(f"graph {spec.graph_id!r}: importing {spec.path} failed: "
                                   f"{type(e).__name__}: {e}") from None
        return module


def load_graph(spec: GraphSpec) -> LoadedGraph:
    """Import one entry and classify its object."""
    module = _module(spec)
    try:
        value = getattr(module, spec.attr)
    except AttributeError:
        graphs = [k for k, v in vars(module).items() if isinstance(v, (Pregel, StateGraph)) and not k.startswith("_")]
        hint = f" (graphs there: {', '.join(sorted(graphs))})" if graphs else ""
        raise GraphConfigError(f"graph {spec.graph_id!r}: {spec.target}: no attribute {spec.attr!r}{hint}") from None
    if isinstance(value, Pregel):
        return LoadedGraph(spec, "compiled", value)
    if isinstance(value, StateGraph):
        return LoadedGraph(spec, "builder", value)
    if callable(value) and not isinstance(value, type):
        _arity(spec, value)
        return LoadedGraph(spec, "factory", value)
    raise GraphConfigError(f"graph {spec.graph_id!r}: {spec.target} is a {type(value).__name__}, not a compiled "
                           "graph, a StateGraph or a factory returning one")


def load_graphs(path: Path, native: Mapping[tuple[Path, str], Callable[[], StateGraph]] | None = None
                ) -> dict[str, LoadedGraph]:
    """Every graph ``langgraph.json`` at ``path`` names, by graph id. An entry whose
    ``(file, attr)`` is a key of ``native`` is not imported: the builder there stands in."""
    config = read_config(path)
    add_dependencies(path, config)
    out = {}
    for s in specs(path, config):
        stand_in = (native or {}).get(s.origin())
        out[s.graph_id] = LoadedGraph(s, "builder", stand_in()) if stand_in is not None else load_graph(s)
    return out


def _arity(spec: GraphSpec, fn: Callable[..., Any]) -> int:
    """How many arguments a factory takes: 0, or 1 (the ``RunnableConfig``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1 or any(p.kind == p.KEYWORD_ONLY for p in required):
        raise GraphConfigError(f"graph {spec.graph_id!r}: factory {spec.target} must take at most one argument "
                               "(the RunnableConfig)")
    has_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    return 1 if (positional or has_varargs) else 0


def _call_factory(spec: GraphSpec, fn: Callable[..., Any], config: dict[str, Any]) -> Any:
    """A factory's graph (an async factory is awaited on a loop of its own)."""
    try:
        out = fn(config) if _arity(spec, fn) else fn()
        if inspect.isawaitable(out):
            out = _await(out)
    except GraphConfigError:
        raise
    except Exception as e:
        if is_retryable(e):  # the database away, a timeout: not the factory's fault; retried
            raise
        raise GraphConfigError(f"graph {spec.graph_id!r}: factory {spec.target} failed: {type(e).__name__}: {e}") from e
    if not isinstance(out, (Pregel, StateGraph)):
        raise GraphConfigError(f"graph {spec.graph_id!r}: factory {spec.target} returned a {type(out).__name__}, "
                               "not a compiled graph or a StateGraph")
    return out


def _await(awaitable: Any) -> Any:
    """Run ``awaitable`` to completion from sync code, also when this thread runs a loop."""
    async def wrap() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrap())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(wrap())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name="keel-graph-factory")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
