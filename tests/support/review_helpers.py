"""Helpers of the review back-end tests (escalations, deadlines, webhooks, feedback): an app
on SQLite or Postgres with an embedded worker, a fresh tenant with a key per role, and a
loopback HTTP receiver for webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.api_helpers import demo_tickets, load_demo, new_tenant

from engine.runtime import Runtime
from guards.pack import DEFAULT_POLICY_PATH
from keel.config import Settings, get_settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def write_pack(path: Path, **approvals: Any) -> Path:
    """The shipped pack with some ``[approvals]`` lines changed (TOML values as JSON)."""
    lines = DEFAULT_POLICY_PATH.read_text().splitlines()
    for key, value in approvals.items():
        (i,) = [n for n, line in enumerate(lines) if line.startswith(f"{key} =")]
        lines[i] = f"{key} = {json.dumps(value)}"
    path.write_text("\n".join(lines) + "\n")
    return path


def make_runtime(db_url: str | None, tmp: Path, pack: Path | None = None, **settings: Any) -> Runtime:
    """A runtime on Postgres (``db_url``) or on an embedded SQLite store in ``tmp``."""
    return Runtime(Settings(database_url=db_url, data_dir=tmp, now=NOW, plan_signing_key="review-test-key",
                            policy_file=pack, **settings))


@contextmanager
def served(db_url: str | None, tmp: Path, pack: Path | None = None, *, worker: bool = True,
           **settings: Any) -> Iterator[tuple[Any, Runtime]]:
    """A TestClient on the keel app (with an embedded worker unless ``worker=False``)."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    rt = make_runtime(db_url, tmp, pack, **settings)
    app = create_app(rt, embedded_worker=worker, worker_kwargs={"poll_s": 0.05})
    try:
        with TestClient(app) as client:
            yield client, rt
    finally:
        rt.close()


class Tenant:
    """A fresh tenant with the demo records and a key per role (two approvers)."""

    def __init__(self, rt: Runtime) -> None:
        self.name = new_tenant()
        load_demo(rt, self.name)
        key = rt.principals.create_key
        self.h = {role: {"x-api-key": key(self.name, f"{role}-user", role)} for role in ("requester", "approver", "admin")}
        self.h["approver2"] = {"x-api-key": key(self.name, "approver2-user", "approver")}
        self.tickets = demo_tickets(self.name)

    def run(self, client: Any, ticket: str) -> dict[str, Any]:
        """Run a demo ticket to its end or its approval; the ``/tickets`` response."""
        r = client.post("/tickets", json={"ticket": self.tickets[ticket], "wait": True}, headers=self.h["requester"])
        assert r.status_code == 201, r.text
        return r.json()


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, step: float = 0.05) -> Any:
    """``cond()``'s first truthy value, polled until ``timeout`` (AssertionError then)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("condition not met in time")


class Receiver:
    """A webhook receiver on a free loopback port: answers each POST with the next status of
    ``script`` (then 200) and keeps every request (headers, body)."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer.lock:
                    outer.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    code = outer.script.pop(0) if outer.script else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._t = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def keel_cli(argv: list[str], monkeypatch: Any, env: dict[str, str], capsys: Any) -> tuple[int, str, str]:
    """Run ``keel ARGV`` in this process with ``env`` set: ``(exit status, stdout, stderr)``.

    Settings are read once per process, so their cache is cleared before and after."""
    from cli.main import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        code = main(argv)
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    return code, out.out, out.err
