"""The supply-chain exceptions workflow as a state graph, built from keel's parts.

Same shape as support (route, read, propose, policy gate, approval, execute, verify, end),
so it is wired by the one topology definition, :func:`graphs.support.wire_support_topology`,
with supply's node bodies (:mod:`nodes.supply`). Its nodes take a
:class:`~graphs.supply_state.SupplyContext` as the run's LangGraph context, which the
engine builds from its runtime (``engine.supply.supply_context``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime

from graphs.context import MissingContext
from graphs.supply_state import SupplyContext, SupplyInput, SupplyState
from graphs.support import wire_support_topology
from nodes import supply as n

__all__ = ["build_supply_graph", "BODIES"]

BODIES: dict[str, Callable[..., dict[str, Any]]] = {
    "triage": n.triage,
    "retrieve_context": n.read_context,
    "propose_action": n.propose,
    "policy_check": n.policy_check,
    "await_approval": n.await_approval,
    "execute_action": n.execute,
    "verify": n.verify,
    "complete": n.complete,
    "escalate_to_human": n.escalate_to_human,
}
"""Supply's body of each step of the shared topology."""

_WITH_CONFIG = {"triage", "await_approval"}


def _bind(name: str, default: Callable[[], SupplyContext] | None) -> Callable[..., dict[str, Any]]:
    """Node ``name`` with its :class:`SupplyContext` taken from the run (or ``default()``)."""
    fn = BODIES[name]

    def ctx_of(runtime: Runtime[Any]) -> SupplyContext:
        if isinstance(runtime.context, SupplyContext):
            return runtime.context
        if default is None:
            raise MissingContext("the supply graph runs with context=SupplyContext(...) "
                                 "(engine.supply.supply_context builds it); this run has "
                                 f"{type(runtime.context).__name__}")
        return default()

    if name in _WITH_CONFIG:
        def node_with_config(state: SupplyState, config: RunnableConfig, runtime: Runtime[Any]) -> dict[str, Any]:
            return fn(state, config, ctx_of(runtime))

        node_with_config.__name__ = name
        return node_with_config

    def node(state: SupplyState, runtime: Runtime[Any]) -> dict[str, Any]:
        return fn(state, ctx_of(runtime))

    node.__name__ = name
    return node


def build_supply_graph(*, default_context: Callable[[], SupplyContext] | None = None) -> StateGraph:
    """The uncompiled supply graph. Run it with ``context=SupplyContext(...)``
    (``engine.runtime.Runtime.context("supply")``); ``default_context`` is for the Studio
    entry point only, where LangGraph's server cannot pass keel's context."""
    if default_context is None:
        g = StateGraph(SupplyState, context_schema=SupplyContext, input_schema=SupplyInput)
    else:
        g = StateGraph(SupplyState, input_schema=SupplyInput)
    return wire_support_topology(g, lambda name: _bind(name, default_context))
