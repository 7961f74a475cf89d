"""``keel trace THREAD``: the thread's traces from keel's database, as a tree with timings."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.commands import CliError, _runtime
from engine.tracing import format_tree, thread_trace

__all__ = ["register", "cmd_trace"]


def cmd_trace(args: argparse.Namespace) -> int:
    """Print the thread's span trees (``--json``: the same trees as ``GET /threads/{id}/trace``)."""
    rt = _runtime()
    try:
        roots = thread_trace(rt, args.tenant, args.thread)
        if not roots:
            raise CliError(f"thread {args.thread}: no spans recorded"
                           + (f" for tenant {args.tenant}" if args.tenant else ""))
        if args.json:
            print(json.dumps({"thread_id": args.thread, "traces": roots}, indent=2, ensure_ascii=False))
        else:
            print("\n".join(format_tree(roots)))
        return 0
    finally:
        rt.close()


def register(sub: Any) -> None:
    """Add ``keel trace``."""
    t = sub.add_parser("trace", help="show a thread's traces (spans with timings) from keel's database")
    t.add_argument("thread", help="thread id")
    t.add_argument("--tenant", default=None, help="only this tenant's spans")
    t.add_argument("--json", action="store_true", help="the trees as JSON")
    t.set_defaults(func=cmd_trace)
