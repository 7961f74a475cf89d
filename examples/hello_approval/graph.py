"""A plain LangGraph graph with a human in the loop: nothing in it is keel's.

``draft`` writes a greeting, ``review`` pauses the run with ``interrupt(...)`` until a
person answers, and ``send`` "sends" it (appends it to ``outbox`` in the state) only if
they said yes. Served by ``keel serve --config examples/hello_approval/langgraph.json``
(or by ``langgraph dev`` from this folder), it gets keel's durable queue, tenants and
keys, checkpoints, history and replay without a line changed.
"""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict  # on Python 3.11, pydantic (Studio's schemas) needs this one


class State(TypedDict, total=False):
    name: str
    greeting: str
    approved: bool
    outbox: list[str]


def draft(state: State) -> dict[str, Any]:
    return {"greeting": f"Hello, {state.get('name') or 'world'}!"}


def review(state: State) -> dict[str, Any]:
    # the run stops here; the value is what the reviewer sees, the answer is what
    # `command={"resume": ...}` sends back
    answer = interrupt({"question": "Send this greeting?", "greeting": state["greeting"]})
    approved = answer.get("approve") is True if isinstance(answer, dict) else answer in (True, "yes")
    return {"approved": approved}


def send(state: State) -> dict[str, Any]:
    if not state.get("approved"):
        return {}
    return {"outbox": [*state.get("outbox", []), state["greeting"]]}


builder = StateGraph(State)
builder.add_node("draft", draft)
builder.add_node("review", review)
builder.add_node("send", send)
builder.add_edge(START, "draft")
builder.add_edge("draft", "review")
builder.add_edge("review", "send")
builder.add_edge("send", END)

graph = builder.compile()
"""The compiled graph ``langgraph.json`` names (keel serves it on its own checkpointer)."""
