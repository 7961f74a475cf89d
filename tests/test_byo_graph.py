"""Bring your own graph: a plain LangGraph graph keel did not write, named in a
``langgraph.json`` given with ``--config``, runs on ``keel serve`` + ``keel worker`` processes
on Postgres over HTTP (langgraph-sdk) with keel's guarantees:

* durability: its worker is SIGKILLed while the run is inside a node, another worker takes
  the run over from the last checkpoint and it completes once (the step before the kill is
  not run again; each completed step's side effect is in the file exactly once);
* a plain ``interrupt(...)`` is resumed with ``command={"resume": …}`` by the requester, not
  by another requester or an admin outside the pack's approver roles; the thread's status
  follows LangGraph (interrupted, idle, error);
* another tenant cannot see the thread; the assistants list shows the graph; history works.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_helpers import ROOT, free_port, keel_env, keel_key, new_tenant, spawn, stop, wait_ok, wait_worker

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

LEASE = "2"

USER_GRAPH = textwrap.dedent('''
    """Somebody's graph: plain LangGraph, no keel import. Side effects go to files under
    the directory the input names, one line per completed step."""
    import os
    import time
    from pathlib import Path
    from typing_extensions import TypedDict  # pydantic reads its schema on Python 3.11

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt


    class State(TypedDict, total=False):
        dir: str
        fail: bool
        answer: str
        steps: list


    def _effect(state, name):
        with open(Path(state["dir"]) / "effects.log", "a") as f:
            f.write(name + "\\n")


    def prepare(state: State) -> dict:
        if state.get("fail"):
            raise ValueError("this input is refused")
        _effect(state, "prepare")
        return {"steps": ["prepare"]}


    def slow(state: State) -> dict:
        d = Path(state["dir"])
        with open(d / "entered.log", "a") as f:  # which worker process is in the node
            f.write(f"{os.getpid()}\\n")
        deadline = time.monotonic() + 60
        while not (d / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        _effect(state, "slow")
        return {"steps": state["steps"] + ["slow"]}


    def ask(state: State) -> dict:
        answer = interrupt({"question": "go on?", "steps": state["steps"]})
        return {"answer": answer, "steps": state["steps"] + ["ask"]}


    def finish(state: State) -> dict:
        _effect(state, "finish")
        return {"steps": state["steps"] + ["finish"]}


    builder = StateGraph(State)
    for name, fn in (("prepare", prepare), ("slow", slow), ("ask", ask), ("finish", finish)):
        builder.add_node(name, fn)
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "slow")
    builder.add_edge("slow", "ask")
    builder.add_edge("ask", "finish")
    builder.add_edge("finish", END)
    graph = builder.compile()
''')


@pytest.fixture(scope="module")
def byo(pg_url, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("byo")
    project = tmp / "project"
    project.mkdir()
    (project / "my_graph.py").write_text(USER_GRAPH)
    config = project / "langgraph.json"
    config.write_text(json.dumps({"dependencies": ["."],
                                  "graphs": {"support": "graphs.studio:support", "byo": "./my_graph.py:graph"}}))
    env = keel_env(KEEL_DATABASE_URL=pg_url + "?application_name=keel_byo", KEEL_DATA_DIR=str(tmp),
                   KEEL_PLAN_SIGNING_KEY="byo-key")
    tenant, other = new_tenant(), new_tenant()
    keys = {"req": keel_key(env, tenant, "requester", "alice"), "req2": keel_key(env, tenant, "requester", "bob"),
            "appr": keel_key(env, tenant, "approver", "carol"), "admin": keel_key(env, tenant, "admin", "dave"),
            "other": keel_key(env, other, "requester", "eve")}
    port = free_port()
    server = spawn(env, "serve", "--port", str(port), "--config", str(config), log=tmp / "serve.log")
    workers = [spawn(env, "worker", "--config", str(config), "--lease-seconds", LEASE, "--poll-seconds", "0.05",
                     log=tmp / f"worker{i}.log") for i in range(2)]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, timeout=90, proc=server)
        for i, w in enumerate(workers):
            wait_worker(tmp / f"worker{i}.log", w)
        yield {"url": url, "keys": keys, "workers": workers, "tmp": tmp}
    finally:
        stop(server, *workers)


def _client(byo: dict, who: str):
    return get_sync_client(url=byo["url"], api_key=byo["keys"][who])


def _status(call) -> int:
    """The HTTP status ``call()`` failed with."""
    with pytest.raises(httpx.HTTPStatusError) as e:
        call()
    return e.value.response.status_code


def _wait_for(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


def test_assistants_list_shows_the_graph_and_studio_can_draw_it(byo):
    req = _client(byo, "req")
    assistants = {a["graph_id"]: a for a in req.assistants.search()}
    assert {"byo", "support"} <= set(assistants)
    drawn = req.assistants.get_graph(assistants["byo"]["assistant_id"])
    assert {"prepare", "slow", "ask", "finish"} <= {n["id"] for n in drawn["nodes"]}
    schemas = req.assistants.get_schemas(assistants["byo"]["assistant_id"])
    assert {"dir", "fail", "answer", "steps"} <= set(schemas["input_schema"]["properties"])


def test_killed_mid_node_completes_once_then_interrupt_resume_and_history(byo, tmp_path):
    req = _client(byo, "req")
    work = tmp_path / "work"
    work.mkdir()
    tid = req.threads.create()["thread_id"]
    run = req.runs.create(tid, "byo", input={"dir": str(work)})

    # the run is inside `slow`: SIGKILL the worker process that is executing it
    pid = int(_wait_for(work / "entered.log").split()[0])
    victim = next(w for w in byo["workers"] if w.pid == pid)
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=10)
    (work / "release").write_text("go")

    done = req.runs.join(tid, run["run_id"])
    assert done["__interrupt__"][0]["value"] == {"question": "go on?", "steps": ["prepare", "slow"]}
    assert req.runs.get(tid, run["run_id"])["status"] == "success"
    entered = (work / "entered.log").read_text().split()
    assert len(entered) == 2 and entered[0] != entered[1], "another worker took the run over"
    assert (work / "effects.log").read_text().split() == ["prepare", "slow"], "each completed step once"

    thread = req.threads.get(tid)
    assert thread["status"] == "interrupted"
    state = req.threads.get_state(tid)
    assert state["next"] == ["ask"] and state["tasks"][0]["interrupts"][0]["value"]["question"] == "go on?"

    # another tenant sees nothing; a requester who did not start it and an admin outside the
    # pack's approver roles may not answer it
    for call in (lambda c: c.threads.get(tid), lambda c: c.runs.wait(tid, "byo", command={"resume": "yes"})):
        assert _status(lambda: call(_client(byo, "other"))) == 404
    for who in ("req2", "admin"):
        assert _status(lambda: _client(byo, who).runs.wait(tid, "byo", command={"resume": "yes"})) == 403
    assert req.threads.get(tid)["status"] == "interrupted"
    # a plain interrupt is not a plan approval: keel's approvals queue lists none for it
    listed = httpx.get(f"{byo['url']}/approvals", headers={"x-api-key": byo["keys"]["appr"]})
    assert listed.status_code == 200 and tid not in listed.text

    final = req.runs.wait(tid, "byo", command={"resume": "yes"})
    assert final["answer"] == "yes" and final["steps"] == ["prepare", "slow", "ask", "finish"]
    assert req.threads.get(tid)["status"] == "idle"
    assert (work / "effects.log").read_text().split() == ["prepare", "slow", "finish"]
    assert _status(lambda: req.runs.wait(tid, "byo", command={"resume": "again"})) == 409  # nothing waits

    history = req.threads.get_history(tid, limit=50)
    assert len(history) >= 5 and history[0]["values"]["steps"][-1] == "finish"
    assert any(h["next"] == ["ask"] for h in history) and any(h["next"] == ["slow"] for h in history)
    assert _status(lambda: _client(byo, "other").threads.get_history(tid)) == 404


def test_an_approver_may_resume_and_a_failing_node_leaves_the_thread_in_error(byo, tmp_path):
    req, appr = _client(byo, "req"), _client(byo, "appr")
    (tmp_path / "release").write_text("go")
    tid = req.threads.create()["thread_id"]
    req.runs.wait(tid, "byo", input={"dir": str(tmp_path)})
    assert req.threads.get(tid)["status"] == "interrupted"
    final = appr.runs.wait(tid, "byo", command={"resume": "approved by carol"})
    assert final["answer"] == "approved by carol"
    assert req.threads.get(tid)["status"] == "idle"

    # replay from the checkpoint before `finish`: that step runs again (a new execution)
    before_finish = next(h for h in req.threads.get_history(tid, limit=50) if h["next"] == ["finish"])
    replayed = req.runs.wait(tid, "byo", checkpoint_id=before_finish["checkpoint"]["checkpoint_id"])
    assert replayed["steps"] == ["prepare", "slow", "ask", "finish"]
    assert (tmp_path / "effects.log").read_text().split() == ["prepare", "slow", "finish", "finish"]

    bad = req.threads.create()["thread_id"]
    run = req.runs.create(bad, "byo", input={"dir": str(tmp_path), "fail": True})
    req.runs.join(bad, run["run_id"])
    got = req.runs.get(bad, run["run_id"])
    assert got["status"] == "error"
    assert req.threads.get(bad)["status"] == "error"
