"""A second official client: the JS/TS LangGraph SDK (``@langchain/langgraph-sdk``, pinned in
``tests/js/package-lock.json``) drives a live ``keel serve`` through ``tests/js/flow.mjs``:
thread -> run -> interrupt -> requester refused -> approver approves -> completed, state,
history and SSE streaming. keel is driven only through its public surface (the ``keel``
console script, HTTP), once on the embedded default (SQLite in a temporary data dir) and
once on a fresh Postgres database.

Node and ``tests/js/node_modules`` (``scripts/install-js``) are needed: without them the
test skips, except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import _own_database

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
FLOW = JS / "flow.mjs"
DEMO_FIXTURES = ROOT / "keel" / "demo" / "fixtures.json"
DEMO_TENANT = "acme"
DEMO_NOW = "2026-11-25T12:00:00Z"
"""The day the bundled demo fixtures are dated around (the embedded default runs on it by itself)."""
FLOW_TESTS = 5
"""Tests flow.mjs must pass (none is skipped; its one `todo` test shows a gap keel still has)."""

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    """Skip, or fail in CI, where the JS client test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI runs the JS client test: `bash scripts/install-js` installs tests/js)")
    pytest.skip(reason)


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed")
    if not (JS / "node_modules" / "@langchain" / "langgraph-sdk" / "package.json").exists():
        _unavailable("tests/js/node_modules is missing: run `bash scripts/install-js`")
    return node  # type: ignore[return-value]


def _keel_script() -> str:
    """The ``keel`` console script of the interpreter running the tests (the project's venv)."""
    beside = Path(sys.executable).parent / "keel"
    found = str(beside) if beside.exists() else shutil.which("keel")
    assert found, "the `keel` console script is not installed (bash scripts/install-dev)"
    return found


def _free_port() -> int:
    """A free loopback port, never 2024 (``langgraph dev``'s, used by others on this machine)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 2024:
            return port


def _keel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_keel_script(), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def _key(env: dict[str, str], role: str, user: str) -> str:
    """``keel keys create``: the key is alone on the last line."""
    out = _keel(env, "keys", "create", "--tenant", DEMO_TENANT, "--role", role, "--user", user)
    assert out.returncode == 0, f"keel keys create failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def _serve(env: dict[str, str], log: Path) -> Iterator[str]:
    """``keel serve`` (with its in-process worker) on a free loopback port; yields its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [_keel_script(), "serve", "--host", "127.0.0.1", "--port", str(port), "--embedded-worker",
             "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"keel serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"keel serve did not come up:\n{log.read_text()[-4000:]}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture()
def js_pg_url() -> Iterator[str]:
    """A Postgres database of this test's own, dropped afterwards."""
    yield from _own_database("keel_tjs")


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.postgres)])
def keel_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment of the ``keel`` commands: no ``KEEL_*`` from outside, a data dir of the
    test's own, and on Postgres a fresh database and the demo fixtures' day as the clock."""
    _node()  # skip (or fail in CI) before a database is made
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    env.update({"KEEL_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)})
    if request.param == "postgres":
        env.update({"KEEL_DATABASE_URL": request.getfixturevalue("js_pg_url"), "KEEL_NOW": DEMO_NOW})
    return env


def test_js_sdk_flow(keel_env: dict[str, str], tmp_path: Path) -> None:
    node = _node()
    keys = {"requester": _key(keel_env, "requester", "alice"), "approver": _key(keel_env, "approver", "bob")}
    log = tmp_path / "serve.log"
    with _serve(keel_env, log) as url:
        if "KEEL_DATABASE_URL" in keel_env:
            # keel serve loads the demo back office only on the embedded store; on Postgres an admin loads it
            admin = _key(keel_env, "admin", "ada")
            r = httpx.post(f"{url}/fixtures", content=DEMO_FIXTURES.read_bytes(), timeout=60,
                           headers={"x-api-key": admin, "content-type": "application/json"})
            assert r.status_code == 200, r.text
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", "FLOW_"))}
        env.update({"FLOW_URL": url, "FLOW_REQUESTER_KEY": keys["requester"], "FLOW_APPROVER_KEY": keys["approver"],
                    "FLOW_APPROVER_USER": "bob", "FLOW_TENANT": DEMO_TENANT})
        out = subprocess.run([node, "--test-reporter=spec", str(FLOW)], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    shown = f"node exited {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}\n--- keel serve\n" \
            f"{log.read_text()[-4000:]}"
    assert out.returncode == 0, shown
    passed = re.search(r"^\S* ?pass (\d+)$", out.stdout, re.M)
    assert passed and int(passed.group(1)) >= FLOW_TESTS, shown
    assert re.search(r"^\S* ?fail 0$", out.stdout, re.M), shown
    assert re.search(r"^\S* ?skipped 0$", out.stdout, re.M), shown  # every flow test ran
