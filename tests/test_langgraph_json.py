"""Every graph that langgraph.json exports loads, and importing it touches no database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_graph_path_loads_without_a_database(tmp_path):
    spec = json.loads((ROOT / "langgraph.json").read_text())
    assert "support" in spec["graphs"]
    for graph_id, target in spec["graphs"].items():
        path, attr = target.split(":")
        code = (
            "import importlib.util, sys; sys.path.insert(0, %r);"
            "s = importlib.util.spec_from_file_location('m', %r); m = importlib.util.module_from_spec(s);"
            "s.loader.exec_module(m); g = getattr(m, %r); print(sorted(g.get_graph().nodes))"
        ) % (str(ROOT), str(ROOT / path), attr)
        env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path / "data"), "KEEL_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        nodes = out.stdout
        for node in ("triage", "retrieve_context", "propose_action", "policy_check", "await_approval",
                     "execute_action", "verify", "complete", "escalate_to_human"):
            assert node in nodes, (graph_id, node)
        assert not (tmp_path / "data").exists(), "importing the graph created a store"
