"""Count the SQL statements a keel process sends to Postgres (``keel serve --import bench.sql_counter``).

pg_stat_statements needs a server-wide preload this benchmark machine does not have (and it
would not tell the API server's statements from the workers'), so this module counts in the
process itself: importing it wraps psycopg's ``Cursor.execute``/``executemany`` (every
statement keel, its pool and LangGraph's checkpointer send goes through one of them;
``Connection.execute`` opens a cursor and calls it), counting each statement by its first
line, whitespace collapsed, cut to 90 characters. While ``BENCH_SQL_STATS_DIR`` is set a
daemon thread writes ``<dir>/<pid>.sql.json`` once a second:
``{"total": N, "by_sql": {text: n, …}}``. The count costs a dict update per statement,
well under a microsecond next to a round trip to the server. A benchmark tool, not a keel
setting: hence ``BENCH_*``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.snapshots import start_writer

__all__ = ["COUNTS", "install", "keel_install", "snapshot"]

COUNTS: Counter[str] = Counter()
_LOCK = threading.Lock()
_INSTALLED: list[bool] = []


def _label(cursor: Any, query: Any) -> str:
    if isinstance(query, bytes):
        text = query.decode("utf-8", "replace")
    elif isinstance(query, str):
        text = query
    else:  # psycopg.sql.Composed: rendered with the cursor's adapters
        text = query.as_string(cursor)
    return " ".join(text.split())[:90]


def snapshot() -> dict[str, Any]:
    """Statements counted so far in this process."""
    with _LOCK:
        return {"pid": os.getpid(), "t": time.time(), "total": sum(COUNTS.values()), "by_sql": dict(COUNTS)}


def install() -> None:
    """Wrap psycopg's cursors once per process (idempotent); start the stats writer."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    import psycopg

    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        for name in ("execute", "executemany"):
            real = getattr(cls, name)

            def counted(self: Any, query: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                try:
                    label = _label(self, query)
                except Exception:  # noqa: BLE001 - a Composed without a connection: count it anyway
                    label = "?"
                with _LOCK:
                    COUNTS[label] += 1
                return _real(self, query, *args, **kwargs)

            setattr(cls, name, counted)
    out = os.environ.get("BENCH_SQL_STATS_DIR")
    if out:
        start_writer(Path(out), snapshot, every_s=1.0, suffix=".sql", name="bench-sql-stats")


def keel_install(runtime: Any) -> None:  # noqa: ARG001 - keel's --import hook signature
    """``keel serve --import bench.sql_counter``: the wrapper is installed on import."""


install()
