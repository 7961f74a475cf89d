"""A fork server for the fault suite's `keel serve` / `keel worker` processes.

The kill tests SIGKILL a worker more than a dozen times and each kill needs a
replacement; a fresh interpreter spends seconds importing LangGraph, FastAPI and keel.
This process imports them once (no threads, no connections) and forks one child per
request; the child runs ``cli.main.main(ARGV)``, exactly what ``keel ARGV`` runs, in a
process of its own that the tests SIGKILL for real.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "log": PATH}``; the child's
pid is answered on stdout, one per line. Children are reaped automatically.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# the heavy imports, done once; nothing here opens a connection or starts a thread
import api.app  # noqa: E402,F401
import api.routes  # noqa: E402,F401
import cli.main  # noqa: E402
import cli.service  # noqa: E402,F401
import engine.worker  # noqa: E402,F401
import graphs.support  # noqa: E402,F401
import langgraph.checkpoint.postgres  # noqa: E402,F401
import psycopg_pool  # noqa: E402,F401
import support.faults_hooks  # noqa: E402,F401
import uvicorn  # noqa: E402,F401


def _child(argv: list[str], log: str) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.stdin = open(os.devnull)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    code = 1
    try:
        code = int(cli.main.main(argv) or 0)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # no zombies
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req["argv"], req["log"])
        print(pid, flush=True)


if __name__ == "__main__":
    main()
