"""The example a user copies (examples/hello_approval) works as its README says: `keel serve
--config examples/hello_approval/langgraph.json` on the embedded store serves only that
plain LangGraph graph, its interrupt is answered with ``command={"resume": …}``, and its
history is there."""

from __future__ import annotations

import pytest
from langgraph_sdk import get_sync_client

from support.api_helpers import ROOT, free_port, keel_env, keel_key, spawn, stop, wait_ok

pytestmark = pytest.mark.slow


def test_hello_approval_as_the_readme_says(tmp_path):
    env = keel_env(KEEL_DATA_DIR=str(tmp_path / "data"))
    key = keel_key(env, "acme", "requester", "alice")
    port = free_port()
    proc = spawn(env, "serve", "--port", str(port), "--config", str(ROOT / "examples" / "hello_approval" / "langgraph.json"),
                 log=tmp_path / "serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, proc=proc)
        c = get_sync_client(url=url, api_key=key)
        assert [a["graph_id"] for a in c.assistants.search()] == ["hello_approval"]
        t = c.threads.create()
        c.runs.wait(t["thread_id"], "hello_approval", input={"name": "Ada"})
        assert c.threads.get_state(t["thread_id"])["tasks"][0]["interrupts"][0]["value"] == {
            "question": "Send this greeting?", "greeting": "Hello, Ada!"}
        assert c.threads.get(t["thread_id"])["status"] == "interrupted"
        c.runs.wait(t["thread_id"], "hello_approval", command={"resume": {"approve": True}})
        assert c.threads.get_state(t["thread_id"])["values"]["outbox"] == ["Hello, Ada!"]
        assert c.threads.get(t["thread_id"])["status"] == "idle"
        assert len(c.threads.get_history(t["thread_id"])) >= 4
    finally:
        stop(proc)
