"""The support workflow as an explicit state graph.

TRIAGE → RETRIEVE_CONTEXT → PROPOSE_ACTION → POLICY_CHECK → [AWAIT_APPROVAL] →
EXECUTE_ACTION → VERIFY → COMPLETE, with ESCALATE_TO_HUMAN reachable from every node
that the policy can stop. Transitions are code over typed state: a node that decides
to escalate sets ``status = "escalated"`` and the router below sends it there.

The supervisor is TRIAGE; the specialist (billing, orders, access, knowledge) is the
route in state, which fixes the tool allowlist every later node works under.
"""

from __future__ import annotations

from functools import wraps
from typing import Any
from collections.abc import Callable

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from graphs.context import MissingContext, SupportContext
from graphs.state import SupportInput, SupportState
from nodes.approval import await_approval
from nodes.execute import execute_action
from nodes.finish import complete, escalate_to_human
from nodes.policy_check import policy_check
from nodes.propose import propose_action
from nodes.retrieve import retrieve_context
from nodes.triage import triage
from nodes.verify import verify

__all__ = ["build_support_graph", "wire_support_topology", "NODES", "BODIES"]

NODES = (
    "triage",
    "retrieve_context",
    "propose_action",
    "policy_check",
    "await_approval",
    "execute_action",
    "verify",
    "complete",
    "escalate_to_human",
)
"""Node names, in workflow order."""

BODIES: dict[str, Callable] = {
    "triage": triage,
    "retrieve_context": retrieve_context,
    "propose_action": propose_action,
    "policy_check": policy_check,
    "await_approval": await_approval,
    "execute_action": execute_action,
    "verify": verify,
    "complete": complete,
    "escalate_to_human": escalate_to_human,
}
"""Each node's function, by name. The builder reads it when it builds, so a hook installed
before (``tests/support/faults_hooks.py``) wraps every node of the graphs built after."""


def _escalated_or(nxt: str) -> Callable[[SupportState], str]:
    def route(state: SupportState) -> str:
        return "escalate_to_human" if state.get("status") == "escalated" else nxt

    route.__name__ = f"escalate_or_{nxt}"
    return route


def _after_propose(state: SupportState) -> str:
    if state.get("status") == "escalated":
        return "escalate_to_human"
    return "complete" if state.get("status") == "completed" else "policy_check"


def _after_policy(state: SupportState) -> str:
    if state.get("status") == "escalated":
        return "escalate_to_human"
    return "await_approval" if state.get("status") == "awaiting_approval" else "execute_action"


def _after_approval(state: SupportState) -> str:
    status = state.get("status")
    if status == "escalated":
        return "escalate_to_human"
    return "complete" if status == "rejected" else "execute_action"


def build_support_graph(*, default_context: Callable[[], SupportContext] | None = None) -> StateGraph:
    """The uncompiled support graph. Its nodes get their dependencies as the run's context:
    run it with ``context=SupportContext(...)`` (``engine.runtime.Runtime.context()``).

    ``default_context`` is for the Studio entry point only (:mod:`graphs.studio`): LangGraph's
    server cannot pass keel's context (it passes its own ``configurable`` as a dict, or
    nothing), so there the graph declares no context schema and a node that runs without a
    :class:`SupportContext` takes ``default_context()``. Without it, a run lacking the
    context fails at its first node with :class:`MissingContext`.
    """
    if default_context is None:
        g = StateGraph(SupportState, context_schema=SupportContext, input_schema=SupportInput)
    else:
        g = StateGraph(SupportState, input_schema=SupportInput)
    return wire_support_topology(g, lambda name: _with_context(name, default_context))


def _with_context(name: str, default: Callable[[], SupportContext] | None) -> Callable[..., Any]:
    """Node ``name`` (its body from :data:`BODIES`) with ``runtime.context`` checked (or
    defaulted) before it runs.

    LangGraph reads the node's parameters through ``functools.wraps`` (``__wrapped__``), so
    it passes ``config`` and ``runtime`` exactly as the body declares them. The body is looked
    up in :data:`BODIES` on every call, not when the graph is built: a graph compiled before
    a process wraps a body (``keel worker --import`` fault hooks, tracing) still runs the
    wrapped one.
    """

    @wraps(BODIES[name])
    def node(state: SupportState, **kwargs: Any) -> Any:
        runtime: Runtime[Any] = kwargs["runtime"]
        if not isinstance(runtime.context, SupportContext):
            if default is None:
                raise MissingContext(
                    "the support graph runs with context=SupportContext(...) "
                    "(engine.runtime.Runtime.context() builds it); this run has "
                    f"{type(runtime.context).__name__}")
            kwargs["runtime"] = runtime.override(context=default())
        return BODIES[name](state, **kwargs)

    return node


def wire_support_topology(g: StateGraph, body: Callable[[str], Callable]) -> StateGraph:
    """Add the support workflow's nodes and edges to ``g``; ``body(name)`` gives each node.

    The one definition of the topology: the graph keel runs and the benchmark's bare
    LangGraph twin (``bench/overhead.py``) are both wired here, so they cannot drift apart.
    """
    for name in NODES:
        g.add_node(name, body(name))
    g.add_edge(START, "triage")
    g.add_conditional_edges("triage", _escalated_or("retrieve_context"), ["retrieve_context", "escalate_to_human"])
    g.add_conditional_edges("retrieve_context", _escalated_or("propose_action"), ["propose_action", "escalate_to_human"])
    g.add_conditional_edges("propose_action", _after_propose, ["policy_check", "complete", "escalate_to_human"])
    g.add_conditional_edges("policy_check", _after_policy, ["await_approval", "execute_action", "escalate_to_human"])
    g.add_conditional_edges("await_approval", _after_approval, ["execute_action", "complete", "escalate_to_human"])
    g.add_conditional_edges("execute_action", _escalated_or("verify"), ["verify", "escalate_to_human"])
    g.add_conditional_edges("verify", _escalated_or("complete"), ["complete", "escalate_to_human"])
    g.add_edge("complete", END)
    g.add_edge("escalate_to_human", END)
    return g
