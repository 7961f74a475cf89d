"""Entry point for ``langgraph dev`` / LangGraph Studio (see ``langgraph.json``).

LangGraph's server runs the graph without keel's :class:`~graphs.context.SupportContext`
(it cannot build one), so this is the one place with a process-wide runtime: the graph's
nodes take their context from :func:`engine.runtime.studio_context`, which builds keel's
runtime from ``KEEL_*`` settings on first use (embedded SQLite with the demo fixtures
unless configured otherwise). Importing this module touches no database. The server
supplies its own checkpointer, so the graph is compiled without one.
"""

import threading

from engine.runtime import Runtime, studio_context
from engine.supply import SUPPLY_DEMO_FIXTURES, load_supply_fixtures, supply_context, supply_parts
from graphs.supply import build_supply_graph
from graphs.supply_state import SupplyContext
from graphs.support import build_support_graph
from keel.config import get_settings
from tools.supply import parse_supply_fixtures

__all__ = ["support", "supply"]

support = build_support_graph(default_context=studio_context).compile()
"""The support graph, as ``langgraph dev`` serves it (graph id ``support``)."""

_SUPPLY_RT: list[Runtime] = []
_SUPPLY_LOCK = threading.Lock()


def studio_supply_context() -> SupplyContext:
    """The supply graph's context under Studio: a runtime from ``KEEL_*`` settings, with the
    bundled supply fixtures loaded if their tenant has no records yet (built on first use)."""
    with _SUPPLY_LOCK:
        if not _SUPPLY_RT:
            rt = Runtime(get_settings())
            fx = parse_supply_fixtures(SUPPLY_DEMO_FIXTURES.read_text(encoding="utf-8"))
            if not supply_parts(rt).store.has_tenant(fx.tenant):
                load_supply_fixtures(rt, fx)
            _SUPPLY_RT.append(rt)
        return supply_context(_SUPPLY_RT[0])


supply = build_supply_graph(default_context=studio_supply_context).compile()
"""The supply-chain exceptions graph, as ``langgraph dev`` serves it (graph id ``supply``)."""
