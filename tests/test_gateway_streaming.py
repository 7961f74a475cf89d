"""The gateway streams each accepted answer as chat-model tokens inside a graph run (what
LangGraph's ``messages`` mode and the event stream read), does nothing outside one, and
never lets a failing listener fail the model call."""

from __future__ import annotations

import json
from typing import TypedDict

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.graph import END, START, StateGraph

from gateway.gateway import ModelGateway
from gateway.local import LocalProvider
from gateway.streaming import stream_answer, token_chunks
from keel.types import Ticket

TICKET = Ticket.model_validate({"id": "T-1", "tenant": "acme", "customer_id": "C-1", "channel": "email",
                                "subject": "Refund please", "body": "I was charged twice for order O-1001, refund it."})


class _S(TypedDict, total=False):
    route: str


def _graph(gateway: ModelGateway):
    def node(state: _S) -> dict:
        return {"route": gateway.triage(TICKET).route}

    g = StateGraph(_S)
    g.add_node("triage", node)
    g.add_edge(START, "triage")
    g.add_edge("triage", END)
    return g.compile()


def test_token_chunks_join_back():
    for text in ("", "a", '{"route": "billing", "confidence": 0.9}', "x" * 70, "  lead and trail  "):
        pieces = token_chunks(text)
        assert "".join(pieces) == text
        assert all(len(p.strip()) <= 16 for p in pieces)
    assert len(token_chunks('{"route": "billing", "confidence": 0.9}')) == 4


def test_answers_stream_in_messages_mode():
    gateway = ModelGateway([LocalProvider()])
    chunks = [c for mode, c in _graph(gateway).stream({}, stream_mode=["messages", "values"]) if mode == "messages"]
    assert len(chunks) > 1
    assert {m.id for m, _ in chunks} == {chunks[0][0].id}
    assert all(meta["langgraph_node"] == "triage" for _, meta in chunks)
    answer = json.loads("".join(m.content for m, _ in chunks))
    assert answer == gateway.triage(TICKET).model_dump(mode="json")


def test_no_graph_no_stream_and_failing_listener_is_harmless():
    stream_answer("triage", "local", "sys", {}, {"route": "billing"})  # outside a run: nothing to do

    class Broken(BaseCallbackHandler):
        raise_error = True

        def on_chat_model_start(self, *a, **kw):
            raise RuntimeError("listener down")

    gateway = ModelGateway([LocalProvider()])
    out = _graph(gateway).invoke({}, {"callbacks": [Broken()]})
    assert out["route"] == gateway.triage(TICKET).route
