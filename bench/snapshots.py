"""A benchmark hook's counters, written for the benchmark to read: one JSON file per process.

The hooks (:mod:`bench.latency_hook`, :mod:`bench.sql_counter`) run inside keel's processes;
the benchmark reads ``<pid><suffix>.json`` from the directory it named, replaced atomically
(written to a temporary file, then renamed) so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["start_writer"]


def start_writer(out: Path, snapshot: Callable[[], Any], *, every_s: float, suffix: str = "", name: str) -> None:
    """Write ``snapshot()`` to ``out/<pid><suffix>.json`` every ``every_s`` seconds, from a
    daemon thread named ``name`` (it dies with the process)."""

    def loop() -> None:
        out.mkdir(parents=True, exist_ok=True)
        path, tmp = out / f"{os.getpid()}{suffix}.json", out / f".{os.getpid()}{suffix}.tmp"
        while True:
            tmp.write_text(json.dumps(snapshot()))
            tmp.replace(path)
            time.sleep(every_s)

    threading.Thread(target=loop, name=name, daemon=True).start()
