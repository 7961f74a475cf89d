"""The LangGraph Studio path: `langgraph dev` (in-memory runtime, offline) serves the
project's langgraph.json on a free port, and langgraph-sdk runs the support graph to its
approval interrupt and resumes it there too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_sync_client

from support.api_helpers import ROOT, free_port, keel_env

pytestmark = pytest.mark.slow


def _langgraph_bin() -> str | None:
    exe = Path(sys.executable).with_name("langgraph")
    return str(exe) if exe.exists() else shutil.which("langgraph")


def test_langgraph_dev_runs_support_to_interrupt_and_resume(tmp_path):
    exe = _langgraph_bin()
    if exe is None:
        pytest.fail("langgraph-cli is a development dependency; install '.[dev]'")
    port = free_port()
    env = keel_env(KEEL_DATA_DIR=str(tmp_path / "data"), LANGGRAPH_CLI_NO_ANALYTICS="1", LANGSMITH_TRACING="false")
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen([exe, "dev", "--port", str(port), "--no-browser", "--no-reload", "--config",
                             str(ROOT / "langgraph.json")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "langgraph dev did not start"
            time.sleep(0.3)
        demo = json.loads((ROOT / "keel" / "demo" / "tickets.jsonl").read_text().splitlines()[7])
        assert demo["id"] == "T-8"
        client = get_sync_client(url=url, api_key=None)
        tid = client.threads.create()["thread_id"]
        state = client.runs.wait(tid, "support", input={"ticket": demo})
        intr = state["__interrupt__"][0]["value"]
        assert intr["plan_hash"] and state["status"] == "awaiting_approval"
        final = client.runs.wait(tid, "support", command={"resume": {
            "decision": "approve", "plan_hash": intr["plan_hash"], "reviewer": "studio-reviewer", "reason": "ok"}})
        assert final["status"] == "completed", final
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()
