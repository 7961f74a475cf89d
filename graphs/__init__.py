"""Graph builders, by graph id (the ids of ``langgraph.json``)."""

from graphs.support import build_support_graph

__all__ = ["GRAPH_BUILDERS", "build_support_graph"]

GRAPH_BUILDERS = {"support": build_support_graph}
"""Graph id → builder taking ``runtime=``; the API and workers compile from here."""
