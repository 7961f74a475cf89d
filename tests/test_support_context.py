"""The support graph's nodes get their dependencies as LangGraph's runtime context.

They run on a hand-made :class:`SupportContext` of fakes (no runtime, no database, no
settings), a run without one is refused with a clear error, the Studio entry point builds
its own, the signing key never shows in a repr, and keel's runtime hands each graph the
context its schema declares.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone, UTC
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from engine.registry import GRAPH_BUILDERS
from engine.runtime import Runtime
from gateway.gateway import ModelGateway
from gateway.local import LocalProvider
from graphs.context import MissingContext, SupportContext
from graphs.support import build_support_graph
from guards.budgets import RunCaps
from guards.pack import load_policy
from guards.policy import PolicyEngine
from keel.audit import AuditRow
from keel.config import Settings
from tools.registry import cards
from tools.runner import ToolContext, ToolResult

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
T12 = next(t for t in map(json.loads, (ROOT / "keel" / "demo" / "tickets.jsonl").read_text().splitlines())
           if t["id"] == "T-12")  # a returns question: the knowledge route answers it from an article


class FakeTools:
    """The knowledge base as one article; every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], ToolContext]] = []

    def call(self, name: str, args: Any, ctx: ToolContext) -> ToolResult:
        self.calls.append((name, dict(args), ctx))
        assert name == "search_kb"
        return ToolResult(ok=True, attempts=1, output={"results": [
            {"id": "KB-3", "title": "Returns", "snippet": "Return within 30 days; the label is free.", "score": 3.2}]})


class FakeAudit:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def append(self, tenant: str, kind: Any, *, actor: str, data: dict[str, Any] | None = None,
               thread_id: str | None = None, correlation_id: str | None = None, at: datetime | None = None) -> AuditRow:
        self.rows.append({"tenant": tenant, "kind": kind, "actor": actor, "data": data or {}})
        return AuditRow(seq=len(self.rows), tenant=tenant, thread_id=thread_id, kind=kind, actor=actor, at="",
                        correlation_id=correlation_id, data=data or {}, prev_hash="", row_hash="")

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[AuditRow]:
        return []


class FakeIndex:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def record(self, thread_id: str, *, tenant: str, status: str, **kw: Any) -> None:
        self.statuses.append(status)


class Unlimited:
    def __init__(self) -> None:
        self.charged = 0

    def remaining(self, tenant: str, now: datetime, user: str | None = None) -> int:
        return 10**9

    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False,
               user: str | None = None) -> bool:
        self.charged += tokens
        return True


class Untouchable:
    """A store no node of this run may read (the knowledge route needs none)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected store access: {name}")


def fake_context(**overrides: Any) -> SupportContext:
    pack = load_policy()
    parts: dict[str, Any] = dict(
        policy=pack, policy_engine=PolicyEngine(pack, cards()), caps=RunCaps.from_pack(pack),
        gateway=ModelGateway([LocalProvider()]), tools=FakeTools(), backoffice=Untouchable(), refunds=Untouchable(),
        audit=FakeAudit(), run_index=FakeIndex(), quotas=Unlimited(), role_of=lambda tenant, user: None,
        clock=lambda: NOW, quota_clock=lambda: NOW, signing_key=b"test-signing-key",
    )
    return SupportContext(**{**parts, **overrides})


def test_the_graph_runs_on_a_hand_made_context_without_a_runtime_or_a_database():
    ctx = fake_context()
    graph = build_support_graph().compile(checkpointer=InMemorySaver())
    cfg = {"configurable": {"thread_id": "t-ctx", "requester": "rita"}}
    final = graph.invoke({"ticket": T12}, cfg, context=ctx)
    assert (final["route"], final["status"], final["citations"]) == ("knowledge", "completed", ["KB-3"])
    name, args, call = ctx.tools.calls[0]  # the one tool call went through the context's runner
    assert name == "search_kb" and call.tenant == "acme" and call.allowlist == frozenset(ctx.policy.routes["knowledge"].tools)
    kinds = [r["kind"] for r in ctx.audit.rows]
    assert "route_decision" in kinds and kinds[-1] == "run_finished"
    assert ctx.run_index.statuses == ["running", "completed"]


def test_a_run_without_its_context_is_refused_with_a_clear_error():
    graph = build_support_graph().compile()
    with pytest.raises(MissingContext, match=r"context=SupportContext"):
        graph.invoke({"ticket": T12}, {"configurable": {"thread_id": "t-none"}})


def test_the_studio_graph_builds_its_own_context_when_the_server_passes_none():
    built: list[SupportContext] = []

    def default() -> SupportContext:
        built.append(fake_context())
        return built[-1]

    graph = build_support_graph(default_context=default).compile()
    assert graph.context_schema is None  # the server's dict context is not coerced into SupportContext
    final = graph.invoke({"ticket": T12}, {"configurable": {"thread_id": "t-studio"}}, context={"thread_id": "t-studio"})
    assert final["status"] == "completed" and built
    supplied, before = fake_context(), len(built)  # a real context, when given, is used as is
    graph.invoke({"ticket": T12}, {"configurable": {"thread_id": "t-given"}}, context=supplied)
    assert supplied.tools.calls and len(built) == before


def test_the_signing_key_never_shows_in_a_repr():
    ctx = fake_context()
    assert "test-signing-key" not in repr(ctx)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.signing_key = b"other"  # type: ignore[misc]


def test_keels_runtime_gives_each_graph_the_context_it_declares(tmp_path):
    rt = Runtime(Settings(data_dir=tmp_path, now=NOW, plan_signing_key="k"))
    GRAPH_BUILDERS.setdefault("ctx_free_probe", lambda runtime=None: _context_free_graph())
    try:
        ctx = rt.context("support")
        # the model, tool and store-read parts are the runtime's behind a recorder (engine.recordings)
        assert isinstance(ctx, SupportContext) and ctx.tools.inner is rt.tools and ctx.audit is rt.audit
        assert ctx.clock() == NOW and ctx.signing_key is rt.keyring  # the keyring (keel.keys)
        assert ctx.signing_key.verifying(None) == b"k"  # the configured key verifies plans without a key id
        assert rt.context("ctx_free_probe") is None
    finally:
        GRAPH_BUILDERS.pop("ctx_free_probe", None)
        rt.close()


def _context_free_graph():
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict, total=False):
        done: bool

    g = StateGraph(S)
    g.add_node("n", lambda s: {"done": True})
    g.add_edge(START, "n")
    g.add_edge("n", END)
    return g
