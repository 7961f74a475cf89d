"""Fixtures of the LangGraph Server conformance tests: one live keel per backend (embedded
SQLite, Postgres), a tenant with keys, and a toy graph that uses what the support graph
does not: a subgraph, a LangChain chat model and ``get_stream_writer`` progress."""

from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from datetime import datetime, timezone, UTC
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from support.api_helpers import demo_tickets, load_demo, new_tenant, serve_in_thread

STREAM_TOY = "toy_stream"
CONTEXT_TOY = "toy_context"
REPLY = "all three steps are done"


class StreamState(TypedDict, total=False):
    topic: str
    sleep: float
    steps: Annotated[list[str], operator.add]
    note: str
    reply: str


class ChildState(TypedDict, total=False):
    topic: str
    note: str


def build_stream_toy(runtime: Any = None) -> StateGraph:
    """progress (custom events) → child (a subgraph) → chat (a streaming chat model)."""

    def progress(state: StreamState) -> dict:
        time.sleep(float(state.get("sleep") or 0))  # a run still in flight, for the tests that need one
        write = get_stream_writer()
        for pct in (0, 50, 100):
            write({"progress": pct, "topic": state.get("topic")})
        return {"steps": ["progress"]}

    def inner(state: ChildState) -> dict:
        return {"note": f"inner on {state.get('topic')}"}

    sub = StateGraph(ChildState)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    sub.add_edge("inner", END)

    def chat(state: StreamState) -> dict:
        model = GenericFakeChatModel(messages=iter([AIMessage(content=REPLY)]))
        return {"reply": model.invoke("report").content, "steps": ["chat"]}

    g = StateGraph(StreamState)
    g.add_node("progress", progress)
    g.add_node("child", sub.compile())
    g.add_node("chat", chat)
    g.add_edge(START, "progress")
    g.add_edge("progress", "child")
    g.add_edge("child", "chat")
    g.add_edge("chat", END)
    return g


@dataclass(frozen=True)
class Caller:
    """The toy's context schema: what a client may set per run."""

    who: str
    greeting: str = "hello"


def build_context_toy(runtime: Any = None) -> StateGraph:
    """One node that greets the run context's caller."""

    def greet(state: StreamState, runtime: Runtime[Caller]) -> dict:
        # the run's tenant's store (keel binds it): how many times this caller was greeted
        seen = runtime.store.get(("greetings",), runtime.context.who)
        visits = (seen.value["visits"] if seen else 0) + 1
        runtime.store.put(("greetings",), runtime.context.who, {"visits": visits, "greeting": runtime.context.greeting})
        return {"reply": f"{runtime.context.greeting} {runtime.context.who}"}

    g = StateGraph(StreamState, context_schema=Caller)
    g.add_node("greet", greet)
    g.add_edge(START, "greet")
    g.add_edge("greet", END)
    return g


def register() -> None:
    from engine.registry import GRAPH_BUILDERS

    GRAPH_BUILDERS.setdefault(STREAM_TOY, build_stream_toy)
    GRAPH_BUILDERS.setdefault(CONTEXT_TOY, build_context_toy)


BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request, tmp_path_factory):
    """``(name, runtime)`` of one backend."""
    from engine.runtime import Runtime
    from keel.config import Settings

    register()
    if request.param == "postgres":  # the session's Postgres runtime (its pool is shared)
        yield request.param, request.getfixturevalue("api_runtime")
        return
    settings = Settings(data_dir=tmp_path_factory.mktemp("conf-sqlite"),
                        now=datetime(2026, 11, 25, 12, tzinfo=UTC), plan_signing_key="conf-test-key")
    rt = Runtime(settings)
    yield request.param, rt
    rt.close()


@pytest.fixture(scope="module")
def live(backend):
    """Base URL of a keel app with an embedded worker on ``backend``."""
    from api.app import create_app

    _, rt = backend
    app = create_app(rt, embedded_worker=True, worker_concurrency=2, worker_kwargs={"poll_s": 0.05})
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture()
def world(backend):
    """A tenant with the demo back office, keys by role, and a second tenant's keys."""
    _, rt = backend
    tenant = new_tenant()
    load_demo(rt, tenant)
    keys = {
        "req": rt.principals.create_key(tenant, "rita", "requester"),
        "appr": rt.principals.create_key(tenant, "alex", "approver"),
        "admin": rt.principals.create_key(tenant, "ada", "admin"),
    }
    other = new_tenant()
    keys["other_req"] = rt.principals.create_key(other, "oscar", "requester")
    keys["other_admin"] = rt.principals.create_key(other, "otto", "admin")
    return tenant, keys, demo_tickets(tenant)
