"""Helpers for the API tests: free ports, an in-thread uvicorn server, keel subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import httpx

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-11-25T12:00:00Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_tickets(tenant: str) -> dict[str, dict[str, Any]]:
    rows = map(json.loads, (ROOT / "keel" / "demo" / "tickets.jsonl").read_text().splitlines())
    return {t["id"]: {**t, "tenant": tenant} for t in rows}


def demo_fixtures(tenant: str) -> dict[str, Any]:
    raw = json.loads((ROOT / "keel" / "demo" / "fixtures.json").read_text())
    raw["tenant"] = tenant
    return raw


def new_tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    wait_ok(url)
    try:
        yield url
    finally:
        server.should_exit = True
        t.join(timeout=10)


def wait_ok(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/ok", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


def keel_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    # servers and workers of a test share 2 cores with the rest of the parallel suite: a pooled
    # connection may take longer than production's 3 s to come free, which is not what these
    # tests are about (tests/test_faults_startup.py sets the production value to test the 503)
    env.update({"KEEL_NOW": NOW, "KEEL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "KEEL_DB_POOL_TIMEOUT_S": "20"})
    env.update(extra)
    return env


def keel(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m cli ARGS`` and return the finished process."""
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def keel_key(env: dict[str, str], tenant: str, role: str, user: str) -> str:
    out = keel(env, "keys", "create", "--tenant", tenant, "--role", role, "--user", user)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def wait_worker(log: Path, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until the ``keel worker`` writing ``log`` prints its banner (its threads poll the
    queue): under load a worker can take seconds to import and set up."""
    deadline = time.monotonic() + timeout
    while "keel worker:" not in (log.read_text() if log.exists() else ""):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"worker not ready after {timeout:.0f}s: {log.read_text()[-3000:]}"
        time.sleep(0.1)


def spawn(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    """Start ``python -m cli ARGS`` in the background (output to ``log``)."""
    f = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "cli", *args], env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)


def stop(*procs: Any) -> None:
    """SIGTERM, then SIGKILL what is still alive after 10 s (``Popen`` or anything shaped
    like it)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def load_demo(rt: Any, tenant: str) -> None:
    """Load the demo back office as ``tenant``."""
    from tools.fixtures import parse_fixtures_text

    rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(demo_fixtures(tenant))).fixtures)
