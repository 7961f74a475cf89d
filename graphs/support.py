"""The support workflow as an explicit state graph.

TRIAGE → RETRIEVE_CONTEXT → PROPOSE_ACTION → POLICY_CHECK → [AWAIT_APPROVAL] →
EXECUTE_ACTION → VERIFY → COMPLETE, with ESCALATE_TO_HUMAN reachable from every node
that the policy can stop. Transitions are code over typed state: a node that decides
to escalate sets ``status = "escalated"`` and the router below sends it there.

The supervisor is TRIAGE; the specialist (billing, orders, access, knowledge) is the
route in state, which fixes the tool allowlist every later node works under.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import TYPE_CHECKING, Callable

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from graphs.state import SupportInput, SupportState
from nodes.approval import await_approval
from nodes.context import retrieve_context
from nodes.execute import execute_action
from nodes.finish import complete, escalate_to_human
from nodes.policy_check import policy_check
from nodes.propose import propose_action
from nodes.triage import triage
from nodes.verify import verify

if TYPE_CHECKING:
    from keel.runtime import Runtime

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
"""Each node's function (taking ``rt=``), by name."""


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


def build_support_graph(runtime: "Runtime | None" = None) -> StateGraph:
    """The uncompiled support graph; nodes reach the outside world through ``runtime``.

    With no runtime, the process-wide one is resolved on first use, so the module
    imports without a database (``langgraph dev``).
    """

    def bind(fn: Callable) -> Callable:
        if runtime is not None:
            return partial(fn, rt=runtime)

        wants_config = "config" in inspect.signature(fn).parameters

        def lazy(state: SupportState, config: RunnableConfig):
            from keel.runtime import get_runtime

            rt = get_runtime()
            rt.ensure_fixtures_once()
            return fn(state, config, rt=rt) if wants_config else fn(state, rt=rt)

        lazy.__name__ = fn.__name__
        return lazy

    return wire_support_topology(StateGraph(SupportState, input_schema=SupportInput), lambda name: bind(BODIES[name]))


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
