"""Entry point for ``langgraph dev`` / LangGraph Studio (see ``langgraph.json``).

LangGraph's server runs the graph without keel's :class:`~graphs.context.SupportContext`
(it cannot build one), so this is the one place with a process-wide runtime: the graph's
nodes take their context from :func:`engine.runtime.studio_context`, which builds keel's
runtime from ``KEEL_*`` settings on first use (embedded SQLite with the demo fixtures
unless configured otherwise). Importing this module touches no database. The server
supplies its own checkpointer, so the graph is compiled without one.
"""

from engine.runtime import studio_context
from graphs.support import build_support_graph

__all__ = ["support"]

support = build_support_graph(default_context=studio_context).compile()
"""The support graph, as ``langgraph dev`` serves it (graph id ``support``)."""
