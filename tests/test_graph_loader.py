"""Loading the graphs of a ``langgraph.json`` (engine.loader / engine.registry), as LangGraph's
server does: a compiled graph, a builder, a sync or async factory, by file or by module; and a
clear one-line error for every kind of bad entry. No database: these run in milliseconds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from cli.main import main as keel_main
from engine import registry
from engine.loader import GraphConfigError, load_graphs
from graphs.context import SupportContext

ROOT = Path(__file__).resolve().parents[1]

GRAPHS = textwrap.dedent('''
    from typing import TypedDict
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    class S(TypedDict, total=False):
        x: int
        who: str
        answer: str

    def inc(state: S) -> dict:
        return {"x": state.get("x", 0) + 1}

    def ask(state: S) -> dict:
        return {"answer": interrupt({"q": "ok?"})}

    def make(tag: str = "") -> StateGraph:
        g = StateGraph(S)
        g.add_node("inc", inc)
        g.add_node("ask", ask)
        g.add_edge(START, "inc")
        g.add_edge("inc", "ask")
        g.add_edge("ask", END)
        return g

    builder = make()
    compiled = make().compile(interrupt_before=["ask"])
    not_a_graph = 42
    SEEN = []

    def factory(config: RunnableConfig):
        SEEN.append(config["configurable"].get("who"))
        return make()

    async def afactory(config: RunnableConfig):
        return make().compile()

    def noargs():
        return make()

    def bad_factory(config):
        return "nope"

    def two_args(config, other):
        return make()
''')


def _project(tmp: Path, graphs: dict, extra: str = "") -> Path:
    (tmp / "agent.py").write_text(GRAPHS + extra)
    (tmp / "pkg").mkdir(exist_ok=True)
    (tmp / "pkg" / "__init__.py").write_text("")
    (tmp / "pkg" / "mod.py").write_text("from agent import builder as graph\n")
    cfg = tmp / "langgraph.json"
    cfg.write_text(json.dumps({"dependencies": ["."], "graphs": graphs}))
    return cfg


def _run(graph, thread: str = "t1") -> dict:
    return graph.invoke({"x": 1}, {"configurable": {"thread_id": thread}})


def test_compiled_builder_and_module_entries_run_on_keels_checkpointer(tmp_path):
    cfg = _project(tmp_path, {"c": "./agent.py:compiled", "b": "./agent.py:builder", "m": "pkg.mod:graph",
                              "d": {"path": "./agent.py:builder", "description": "described"}})
    loaded = load_graphs(cfg)
    assert {k: v.kind for k, v in loaded.items()} == {"c": "compiled", "b": "builder", "m": "builder", "d": "builder"}
    assert loaded["d"].spec.description == "described"
    saver = InMemorySaver()
    c = loaded["c"].build(saver)
    assert c.checkpointer is saver and c.name == "c"
    assert c.interrupt_before_nodes == ["ask"], "the compiled graph's interrupt_before is kept"
    assert loaded["c"].value.checkpointer is None, "the user's object is not changed"
    _run(c)
    assert c.get_state({"configurable": {"thread_id": "t1"}}).next == ("ask",)
    b = loaded["b"].build(saver)
    out = _run(b, "t2")
    assert out["x"] == 2 and out["__interrupt__"][0].value == {"q": "ok?"}
    assert b.invoke(Command(resume="yes"), {"configurable": {"thread_id": "t2"}})["answer"] == "yes"
    assert loaded["m"].build(saver).checkpointer is saver


def test_factories_sync_async_and_no_argument_get_the_runs_config(tmp_path):
    cfg = _project(tmp_path, {"f": "./agent.py:factory", "a": "./agent.py:afactory", "n": "./agent.py:noargs"})
    loaded = load_graphs(cfg)
    assert {v.kind for v in loaded.values()} == {"factory"}
    saver = InMemorySaver()
    f = loaded["f"].build(saver, {"configurable": {"who": "alice"}})
    assert f.checkpointer is saver
    import sys
    seen = next(m.SEEN for m in sys.modules.values() if getattr(m, "__file__", None) == str(tmp_path / "agent.py"))
    assert seen[-1] == "alice"
    assert _run(loaded["a"].build(saver), "t3")["x"] == 2
    assert _run(loaded["n"].build(saver), "t4")["x"] == 2


async def _async_caller(entry, saver):
    return entry.build(saver)


def test_an_async_factory_also_builds_from_inside_a_running_loop(tmp_path):
    import asyncio

    entry = load_graphs(_project(tmp_path, {"a": "./agent.py:afactory"}))["a"]
    g = asyncio.run(_async_caller(entry, InMemorySaver()))
    assert _run(g)["x"] == 2


@pytest.mark.parametrize("graphs, message", [
    ({"g": "./missing.py:graph"}, "missing.py: no such file"),
    ({"g": "./agent.py:nope"}, "no attribute 'nope' (graphs there: builder, compiled)"),
    ({"g": "./agent.py:not_a_graph"}, "is a int, not a compiled graph"),
    ({"g": "./agent.py"}, "is not './file.py:attr' or 'module:attr'"),
    ({"g": "no_such_module_xyz:graph"}, "cannot import 'no_such_module_xyz'"),
    ({"g": "./agent.py:two_args"}, "must take at most one argument"),
    ({"g": "./broken.py:graph"}, "importing"),
    ({"g": 7}, "graphs.g"),
    ({}, "graphs"),
])
def test_bad_entries_are_one_clear_error(tmp_path, graphs, message):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(GraphConfigError) as e:
        load_graphs(_project(tmp_path, graphs))
    assert message in str(e.value)


def test_a_factory_returning_something_else_fails_when_built(tmp_path):
    entry = load_graphs(_project(tmp_path, {"g": "./agent.py:bad_factory"}))["g"]
    with pytest.raises(GraphConfigError, match="returned a str, not a compiled graph"):
        entry.build(InMemorySaver())


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(GraphConfigError, match="no such file"):
        load_graphs(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GraphConfigError, match="not valid JSON"):
        load_graphs(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(GraphConfigError, match="JSON object"):
        load_graphs(tmp_path / "list.json")


def test_keels_support_entry_keeps_its_support_context(tmp_path):
    """keel's own langgraph.json names the Studio entry point; keel serves the same topology
    declaring SupportContext (which each run gets from its runtime), by file or module path."""
    for target in (str(ROOT / "graphs" / "studio.py") + ":support", "graphs.studio:support"):
        cfg = tmp_path / "langgraph.json"
        cfg.write_text(json.dumps({"graphs": {"support": target}}))
        entry = load_graphs(cfg, registry.KEEL_NATIVE)["support"]
        assert entry.build(InMemorySaver()).context_schema is SupportContext, target
    ours = load_graphs(registry.LANGGRAPH_JSON, registry.KEEL_NATIVE)
    assert ours["support"].build(InMemorySaver()).context_schema is SupportContext


@pytest.fixture()
def fresh_registry(monkeypatch):
    monkeypatch.setattr(registry, "_ACTIVE", [])
    yield


def test_use_config_serves_that_files_graphs_and_explicit_beats_the_setting(tmp_path, monkeypatch, fresh_registry):
    cfg = _project(tmp_path, {"mine": "./agent.py:builder"})
    monkeypatch.setenv("KEEL_LANGGRAPH_CONFIG", str(cfg))
    from keel.config import get_settings
    get_settings.cache_clear()
    try:
        assert registry.config_path() == cfg.resolve()
        assert registry.config_path(registry.LANGGRAPH_JSON) == registry.LANGGRAPH_JSON.resolve()
        registry.use_config(cfg)
        assert registry.graph_ids()[0] == "mine" and "support" not in registry.loaded()
    finally:
        monkeypatch.delenv("KEEL_LANGGRAPH_CONFIG")
        get_settings.cache_clear()


@pytest.mark.parametrize("command", [["worker"], ["serve"],
                                     ["run", "--fixtures", "x.json", "--tickets", "TICKETS", "--now", "2026-11-25T12:00:00Z"]])
def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys, command, fresh_registry):
    tickets = tmp_path / "t.jsonl"
    tickets.write_text("")
    argv = [a if a != "TICKETS" else str(tickets) for a in command]
    cfg = _project(tmp_path, {"g": "./agent.py:nope"})
    assert keel_main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no attribute 'nope'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert keel_main([*argv, "--config", str(tmp_path / "absent.json")]) == 2
    err = capsys.readouterr().err
    assert "absent.json: no such file" in err and "Traceback" not in err


def test_keel_run_needs_a_support_graph_in_the_config(tmp_path, capsys, fresh_registry):
    tickets = tmp_path / "t.jsonl"
    tickets.write_text("")
    cfg = _project(tmp_path, {"mine": "./agent.py:builder"})
    rc = keel_main(["run", "--fixtures", "x.json", "--tickets", str(tickets), "--now", "2026-11-25T12:00:00Z",
                    "--config", str(cfg)])
    assert rc == 2
    err = capsys.readouterr().err  # "(it has: mine, …)": graphs other modules' --import added may follow
    assert "names no graph 'support' (it has: mine" in err


def test_a_plain_interrupt_is_answered_by_its_requester_or_the_packs_approver_roles(tmp_path):
    """Who may send ``command={"resume": …}`` to a graph keel did not write: the run's
    requester, or a role the pack's ``approver_roles`` names (an admin only if it does)."""
    from engine.approvals import interrupt_resume_refusal
    from engine.runtime import Runtime
    from keel.config import Settings
    from keel.principals import Principal

    def who(user: str, role: str) -> Principal:
        return Principal(tenant="t1", user_id=user, role=role)

    shipped = Runtime(Settings(data_dir=tmp_path / "a"))
    assert interrupt_resume_refusal(shipped, who("alice", "requester"), "alice") is None
    assert interrupt_resume_refusal(shipped, who("carol", "approver"), "alice") is None
    for other in (who("bob", "requester"), who("dave", "admin")):
        refused = interrupt_resume_refusal(shipped, other, "alice")
        assert refused is not None and refused.http_status == 403
    pack = tmp_path / "pack.toml"
    pack.write_text((ROOT / "guards" / "policies" / "support-v1.toml").read_text().replace(
        'approver_roles = ["approver"]', 'approver_roles = ["admin"]'))
    admins = Runtime(Settings(data_dir=tmp_path / "b", policy_file=pack))
    assert interrupt_resume_refusal(admins, who("dave", "admin"), "alice") is None
    assert interrupt_resume_refusal(admins, who("carol", "approver"), "alice") is not None


def test_a_factory_failing_for_a_retryable_reason_is_left_for_the_worker_to_retry(tmp_path):
    from keel.errors import is_retryable

    cfg = _project(tmp_path, {"flaky": "./agent.py:flaky", "buggy": "./agent.py:buggy"}, extra=textwrap.dedent('''
        def flaky(config):
            raise TimeoutError("database away")

        def buggy(config):
            raise KeyError("oops")
    '''))
    loaded = load_graphs(cfg)
    with pytest.raises(TimeoutError) as e:
        loaded["flaky"].build(InMemorySaver())
    assert is_retryable(e.value)
    with pytest.raises(GraphConfigError, match="factory ./agent.py:buggy failed: KeyError") as e:
        loaded["buggy"].build(InMemorySaver())
    assert not is_retryable(e.value)
