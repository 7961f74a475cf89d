"""The workflows as LangGraph state graphs: builders, their typed state and run context.

- :mod:`graphs.state`: the support workflow's state (plain JSON, checkpointed).
- :mod:`graphs.context`: :class:`~graphs.context.SupportContext`, what its nodes may use.
- :mod:`graphs.support`: the support graph's topology and builder.
- :mod:`graphs.studio`: the entry point ``langgraph dev`` serves (``langgraph.json``).

This package re-exports nothing: the state and context sit below the nodes, the
builders above them (see ``.importlinter``), and importing one must not import the other.
"""
