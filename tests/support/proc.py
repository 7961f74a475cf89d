"""Runs one support-graph step in a separate process, for crash and resume tests.

    python tests/support/proc.py start THREAD TICKET_JSON [--kill-after-side-effect MARKER]
    python tests/support/proc.py resume THREAD [--approve-as USER]
    python tests/support/proc.py continue THREAD

Settings come from KEEL_* variables (database URL, data dir, clock). Prints the final
state's status as JSON on the last line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from langgraph.types import Command  # noqa: E402

from engine.approvals import pending_approval, validate_resume  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from keel.config import get_settings  # noqa: E402
from tools.registry import side_effect_tools  # noqa: E402


def main(argv: list[str]) -> int:
    rt = Runtime(get_settings())
    graph = rt.graph("support")
    context = rt.context("support")
    cmd, thread = argv[0], argv[1]
    config = {"configurable": {"thread_id": thread, "requester": "req-user"}}
    if "--kill-after-side-effect" in argv:
        marker = Path(argv[argv.index("--kill-after-side-effect") + 1])
        real_call = rt.tools.call

        def call_then_hang(name, args, ctx):
            res = real_call(name, args, ctx)
            if name in side_effect_tools():
                marker.write_text(str(os.getpid()))
                time.sleep(60)  # the parent SIGKILLs us here: effect committed, checkpoint not
            return res

        rt.tools.call = call_then_hang  # type: ignore[method-assign]
    if cmd == "start":
        state = graph.invoke({"ticket": json.loads(argv[2])}, config, context=context)
    elif cmd == "continue":
        state = graph.invoke(None, config, context=context)
    elif cmd == "resume":
        user = argv[argv.index("--approve-as") + 1]
        request = pending_approval(rt, thread)
        principal = rt.principals.get(request["tenant"], user)
        value = validate_resume(rt, thread, principal, {"decision": "approve", "plan_hash": request["plan_hash"]})
        state = graph.invoke(Command(resume=value), config, context=context)
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps({"status": state.get("status"), "reason_codes": state.get("reason_codes"),
                      "interrupted": bool(state.get("__interrupt__"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
