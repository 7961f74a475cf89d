"""What a run ran with: graph, policy pack, prompt templates, tool contracts and model routing,
each with a content hash.

"Why did it do that?" needs "with what?": two runs that decided differently may have run
different code or configuration. The worker records :func:`run_versions` on each run it
executes (``api_runs.versions``, shown in the run JSON), in the audit trail and on the
run's span. Each entry is ``{"version": label, "sha256": digest}``: the label is what a
human calls it (the pack's ``version``, the graph id, the provider chain), the digest
changes whenever the content does, whatever the label says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from typing import Any

from opentelemetry import trace

from engine.runtime import Runtime
from engine.supply import supply_parts
from gateway.base import TASKS
from gateway.prompts import system_prompt
from tools.registry import TOOLS, tool_schemas
from tools.supply import SUPPLY_TOOLS

__all__ = ["run_versions", "record_run_versions", "digest"]

_LOCK = threading.Lock()
_GRAPHS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
"""Per compiled graph (a factory graph built per run is forgotten with it)."""


def digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


def _graph_version(rt: Runtime, graph_id: str, graph: Any) -> dict[str, str]:
    """The graph's topology (nodes, their functions, edges): cached per compiled graph."""
    with _LOCK:
        try:
            hit = _GRAPHS.get(graph)
        except TypeError:  # not weak-referenceable: computed each time
            hit = None
        if hit is not None:
            return hit
    try:
        drawable = graph.get_graph()
        nodes = sorted(
            (name, f"{getattr(n.data, '__module__', '')}.{getattr(n.data, 'name', None) or type(n.data).__name__}")
            for name, n in drawable.nodes.items())
        edges = sorted((e.source, e.target, bool(e.conditional)) for e in drawable.edges)
        content: Any = {"nodes": nodes, "edges": edges}
    except Exception:  # noqa: BLE001 - a graph that cannot draw itself is named by its class
        content = {"class": f"{type(graph).__module__}.{type(graph).__qualname__}"}
    out = {"version": graph_id, "sha256": digest(content)}
    with _LOCK, contextlib.suppress(TypeError):
        _GRAPHS[graph] = out
    return out


def _policy(rt: Runtime, graph_id: str) -> dict[str, str]:
    if graph_id == "supply":
        pack: Any = supply_parts(rt).pack
    elif graph_id == "support":
        pack = rt.policy
    else:  # a graph of langgraph.json keel did not write: no pack of keel's decides it
        return {"version": "none", "sha256": digest(None)}
    return {"version": pack.version, "sha256": getattr(pack, "sha256", "") or digest(pack.model_dump(mode="json"))}


_TOOL_VERSIONS: dict[tuple[str, tuple[tuple[str, int], ...]], dict[str, str]] = {}
"""Tool-contract versions by (graph, declarations): the JSON schemas take about 2 ms to build,
on every run attempt otherwise. Declarations are frozen, so a registered or replaced tool is a
new key."""


def _tools(graph_id: str) -> dict[str, str]:
    if graph_id == "supply":
        registry: Any = SUPPLY_TOOLS
    else:
        registry = TOOLS
    key = (graph_id, tuple((name, id(decl)) for name, decl in sorted(registry.items())))
    hit = _TOOL_VERSIONS.get(key)
    if hit is None:
        schemas = tool_schemas(registry=registry)
        side = sorted(n for n, d in registry.items() if getattr(d, "side_effect", False))
        hit = {"version": f"{len(schemas)} tools", "sha256": digest({"inputs": schemas, "side_effect": side})}
        with _LOCK:
            _TOOL_VERSIONS[key] = hit
    return hit


def _routing(rt: Runtime) -> dict[str, str]:
    s = rt.settings
    chain = [s.model_provider, *[p for p in s.model_fallbacks if p != s.model_provider]]
    content = {"providers": chain, "openai_model": s.openai_model if "openai" in chain else None,
               "openai_base_url": s.openai_base_url if "openai" in chain else None}
    return {"version": " > ".join(chain), "sha256": digest(content)}


def _environment(rt: Runtime) -> dict[str, str]:
    """``KEEL_ENV`` and what it changes (the pack's section for it, whether side effects dry-run)."""
    env = rt.settings.env
    section = rt.policy.env.get(env)
    content = {"env": env, "section": section.model_dump(mode="json") if section is not None else None,
               "dry_run_side_effects": rt.policy.dry_run_side_effects(env)}
    return {"version": env, "sha256": digest(content)}


def run_versions(rt: Runtime, graph_id: str, graph: Any) -> dict[str, dict[str, str]]:
    """``{graph, policy_pack, prompts, tool_contracts, model_routing, environment}`` of a run of ``graph_id``."""
    prompts = {t: system_prompt(t) for t in TASKS}
    return {
        "graph": _graph_version(rt, graph_id, graph),
        "policy_pack": _policy(rt, graph_id),
        "prompts": {"version": f"{len(prompts)} templates", "sha256": digest(prompts)},
        "tool_contracts": _tools(graph_id),
        "model_routing": _routing(rt),
        "environment": _environment(rt),
    }


def record_run_versions(rt: Runtime, run: dict[str, Any], graph: Any,
                        extra: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Record what this attempt of ``run`` runs with: on the run row (``versions``), in the
    audit trail (``run_started``) and on the current span (``keel.version.*``). ``extra``:
    entries that replace or add to :func:`run_versions`' (a canary's arm and candidate,
    :mod:`engine.releases`)."""
    versions = run_versions(rt, run["graph_id"], graph)
    if extra:
        versions = {**versions, **extra}
    rt.db.execute("UPDATE api_runs SET versions = ? WHERE run_id = ?", (json.dumps(versions, sort_keys=True),
                                                                      run["run_id"]))
    rt.audit.append(run["tenant"], "run_started", actor="system", thread_id=run["thread_id"],
                    correlation_id=run.get("correlation_id"),
                    data={"run_id": run["run_id"], "graph_id": run["graph_id"], "attempt": run.get("attempts"),
                          "versions": versions})
    span = trace.get_current_span()
    for part, v in versions.items():
        span.set_attribute(f"keel.version.{part}", v["version"])
        span.set_attribute(f"keel.version.{part}.sha256", v["sha256"])
    return versions
