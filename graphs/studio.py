"""Entry point for ``langgraph dev`` / LangGraph Studio (see ``langgraph.json``).

Imports without a database: nodes resolve keel's runtime on first use, from ``KEEL_*``
settings (embedded SQLite with the demo fixtures unless configured otherwise). The
LangGraph server supplies its own checkpointer, so the graph is compiled without one.
"""

from graphs.support import build_support_graph

__all__ = ["support"]

support = build_support_graph().compile()
"""The support graph, as ``langgraph dev`` serves it (graph id ``support``)."""
