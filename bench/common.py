"""Shared helpers of keel's in-process benchmarks: scratch databases, demo tenants, stats, tables."""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import sys
import time
from contextlib import contextmanager
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
"""The demo data's day (refund windows are computed from it)."""
PG_ADMIN_URL = os.environ.get("KEEL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""Server (and maintenance database) where each benchmark creates its scratch database."""

AUTO_TICKETS = ("T-1", "T-5", "T-10", "T-12", "T-15", "T-16", "T-18", "T-19", "T-22", "T-26", "T-27")
"""Demo tickets that complete without approval (keel/demo/expected.jsonl: status completed)."""


def expected() -> dict[str, dict[str, Any]]:
    """The demo's expected outcome per ticket id."""
    return {e["ticket_id"]: e for e in map(json.loads, (DEMO / "expected.jsonl").read_text().splitlines())}


def demo_tickets() -> dict[str, dict[str, Any]]:
    """The demo tickets by id (tenant ``acme``)."""
    return {t["id"]: t for t in map(json.loads, (DEMO / "tickets.jsonl").read_text().splitlines())}


@contextmanager
def scratch_database(admin_url: str = PG_ADMIN_URL, keep: bool = False) -> Iterator[str]:
    """A fresh database ``keel_bench_<hex>`` on the server; dropped afterwards unless ``keep``."""
    import psycopg
    from psycopg import sql

    name = f"keel_bench_{secrets.token_hex(5)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        if not keep:
            for attempt in range(30):  # the server may be restarting (fault tests share it)
                try:
                    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
                        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                    break
                except psycopg.OperationalError:
                    if attempt == 29:
                        print(f"could not drop scratch database {name}; drop it by hand", file=sys.stderr)
                    time.sleep(2)


def keel_runtime(url: str, data_dir: Path):
    """A keel Runtime on ``url`` with the demo clock and a fixed signing key."""
    from keel.config import Settings
    from engine.runtime import Runtime

    return Runtime(Settings(database_url=url, data_dir=data_dir, now=NOW, plan_signing_key="bench-key",
                            log_level="WARNING"))


def load_tenant(rt: Any, tenant: str, principals: Sequence[tuple[str, str]] = ()) -> dict[str, dict[str, Any]]:
    """Load the demo back office as ``tenant``; returns the demo tickets rewritten for it.

    A fresh tenant per cycle of tickets keeps every run on the same path: a refund or
    cancel done once would otherwise be denied the second time, and the tenant's daily
    token budget would run out over thousands of runs.
    """
    from tools.fixtures import parse_fixtures_text

    raw = json.loads((DEMO / "fixtures.json").read_text())
    raw["tenant"] = tenant
    parsed = parse_fixtures_text(json.dumps(raw))
    assert parsed.fixtures is not None, parsed.errors
    rt.backoffice.load_fixtures(parsed.fixtures)
    for user, role in principals:
        rt.principals.upsert(tenant, user, role)  # type: ignore[arg-type]
    return {tid: {**t, "tenant": tenant} for tid, t in demo_tickets().items()}


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    """mean, p50, p99 of a sample (milliseconds)."""
    xs = sorted(values_ms)
    if not xs:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}

    def pct(p: float) -> float:
        k = (len(xs) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    return {"mean": statistics.fmean(xs), "p50": pct(0.50), "p99": pct(0.99)}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (right-aligned numbers), ready to paste into the README."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    num = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] == "-" for r in rows)
           and any(isinstance(r[i], (int, float)) for r in rows) for i in range(len(headers))]
    line = lambda vals: "| " + " | ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, num)) + " |"  # noqa: E731
    sep = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, num)) + "|"
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


RESULTS = ROOT / "bench" / "results"
"""Where benchmarks write their JSON results (ignored by git)."""


def finish(out: dict[str, Any], path: str, report: Any, t0: float) -> int:
    """Add the machine, versions and wall time to ``out``, print ``report(out)`` and write
    both to ``path`` as JSON; the exit status of a benchmark's ``main``."""
    out.update(machine=machine(), nproc=os.cpu_count(), versions=versions(), wall_s=round(time.monotonic() - t0, 1))
    text = report(out)
    print(text)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**out, "table": text}, indent=2))
    return 0


def machine() -> str:
    """One line naming the machine: cores, CPU model, Python, Postgres server version."""
    model = "unknown CPU"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                model = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def pg_version(url: str) -> str:
    """The server's version string, short."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SHOW server_version").fetchone()[0]


def versions() -> str:
    """Versions of the libraries measured."""
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("langgraph", "langgraph-checkpoint-postgres", "psycopg"))
