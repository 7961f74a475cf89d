"""The fault suite's cluster: `keel serve` and `keel worker` processes on the real Postgres,
with :mod:`support.faults_hooks` loaded, shared by every tests/test_faults_*.py module.

One cluster per pytest process (started on first use, stopped at session end): the
processes take seconds to start, and every test works in a tenant of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone, UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from support.api_helpers import ROOT, demo_fixtures, demo_tickets, free_port, keel_env, stop, wait_ok

LEASE_S = 2.0
"""Worker lease: a SIGKILLed worker's run is claimable again after this."""
BACKOFF_BASE_S = 0.5
"""First retry delay of a run after a transient failure (then doubled, equal jitter)."""
TOOL_TIMEOUT_S = 1.5
"""The tool runner's timeout in the cluster's workers."""
WALL_CLOCK_S = 15
"""The run wall-clock cap of the cluster's policy (support-v1 says 30 s; short here so that
tests can outwait it)."""
END_STATES = ("completed", "awaiting_approval", "escalated", "rejected")
"""Graph statuses a support run may end in."""


class Tenant:
    """A tenant of its own with the demo back office and API keys for each role."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.name = "t" + uuid.uuid4().hex[:10]
        rt = cluster.rt
        from tools.fixtures import parse_fixtures_text

        rt.backoffice.load_fixtures(parse_fixtures_text(json.dumps(demo_fixtures(self.name))).fixtures)
        self.keys = {
            "requester": rt.principals.create_key(self.name, "req-user", "requester"),
            "approver": rt.principals.create_key(self.name, "approver-1", "approver"),
            "approver2": rt.principals.create_key(self.name, "approver-2", "approver"),
            "admin": rt.principals.create_key(self.name, "admin-user", "admin"),
        }
        self.tickets = demo_tickets(self.name)

    def h(self, role: str = "requester") -> dict[str, str]:
        return {"x-api-key": self.keys[role]}

    # -- HTTP ----------------------------------------------------------------------------
    def new_thread(self, server: int = 0) -> str:
        r = httpx.post(f"{self.c.urls[server]}/threads", json={}, headers=self.h(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["thread_id"]

    def start(self, tid: str, ticket_id: str, server: int = 0) -> str:
        """Queue a support run for a demo ticket on ``tid``; returns the run id."""
        r = httpx.post(f"{self.c.urls[server]}/threads/{tid}/runs", headers=self.h(), timeout=30,
                       json={"assistant_id": "support", "input": {"ticket": self.tickets[ticket_id]}})
        assert r.status_code == 200, r.text
        return r.json()["run_id"]

    def run(self, tid: str, rid: str, server: int = 0) -> dict[str, Any]:
        r = httpx.get(f"{self.c.urls[server]}/threads/{tid}/runs/{rid}", headers=self.h(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, tid: str, rid: str, timeout: float = 60.0, server: int = 0) -> dict[str, Any]:
        """Poll until the run is terminal; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(tid, rid, server)
            if run["status"] not in ("pending", "running"):
                return run
            assert time.monotonic() < deadline, f"run {rid} still {run['status']} after {timeout}s: {run}"
            time.sleep(0.05)

    def values(self, tid: str, server: int = 0) -> dict[str, Any]:
        r = httpx.get(f"{self.c.urls[server]}/threads/{tid}/state", headers=self.h(), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["values"]

    def pending(self, tid: str) -> dict[str, Any]:
        r = httpx.get(f"{self.c.urls[0]}/approvals/{tid}", headers=self.h("approver"), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def approve(self, tid: str, plan_hash: str, role: str = "approver", server: int = 0,
                client: httpx.Client | None = None) -> httpx.Response:
        c = client or httpx
        return c.post(f"{self.c.urls[server]}/approvals/{tid}/approve", headers=self.h(role), timeout=60,
                      json={"plan_hash": plan_hash, "reason": "ok", "wait": False})

    # -- database ------------------------------------------------------------------------
    def count(self, sql: str, *params: Any) -> int:
        return self.c.count(sql, *params)

    def effects(self) -> dict[str, int]:
        """Side-effect rows of this tenant: ledger, refunds, cancelled orders, reships, resets."""
        t = self.name
        return {
            "tool_ledger": self.count("SELECT COUNT(*) FROM tool_ledger WHERE tenant = %s", t),
            "refunds": self.count("SELECT COUNT(*) FROM refunds WHERE tenant = %s", t),
        }

    def refunds(self, order_id: str) -> int:
        return self.count("SELECT COUNT(*) FROM refunds WHERE tenant = %s AND order_id = %s", self.name, order_id)

    def order(self, order_id: str) -> dict[str, Any]:
        o = self.c.rt.backoffice.get_order(self.name, order_id)
        assert o is not None
        return o


class Proc:
    """A child of the fork server (:mod:`support.faults_zygote`), like a ``Popen``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        self.send(signal.SIGKILL)


class Zygote:
    """Starts ``keel ARGV`` processes by forking a pre-imported interpreter."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "faults_zygote.py")], env=env,
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lock = threading.Lock()
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", f"fork server failed: {log.read_text()[-3000:]}"

    def spawn(self, argv: list[str], log: Path) -> Proc:
        with self._lock:
            self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            return Proc(int(self.proc.stdout.readline()))  # type: ignore[union-attr]

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        self._log.close()


class Cluster:
    """Servers and workers (processes of their own) with the fault hooks, plus an in-process runtime."""

    def __init__(self, pg_url: str, tmp: Path, *, servers: int = 2, workers: int = 2) -> None:
        self.pg_url = pg_url
        self.tmp = tmp
        self.faults = tmp / "faults"
        self.faults.mkdir(parents=True, exist_ok=True)
        policy = (ROOT / "guards" / "policies" / "support-v1.toml").read_text()
        assert "wall_clock_s = 30 " in policy
        policy = policy.replace("wall_clock_s = 30 ", f"wall_clock_s = {WALL_CLOCK_S} ").replace(
            'version = "support-v1"', 'version = "support-v1-faults"')
        (tmp / "policy.toml").write_text(policy)
        self.env = keel_env(
            KEEL_DATABASE_URL=pg_url, KEEL_DATA_DIR=str(tmp), KEEL_PLAN_SIGNING_KEY="faults-key",
            KEEL_FAULTS_DIR=str(self.faults), KEEL_TOOL_TIMEOUT_S=str(TOOL_TIMEOUT_S),
            KEEL_POLICY_FILE=str(tmp / "policy.toml"),
            PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        )
        self._n_workers = workers
        self._spawned = 0
        self._logs: dict[int, Path] = {}
        self._lock = threading.RLock()
        self._killer: threading.Thread | None = None
        self._killer_stop = threading.Event()
        self.killed: dict[tuple[str, str], int] = {}
        self.kill_errors: list[str] = []
        self.ports = [free_port() for _ in range(servers)]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.zygote = Zygote(self.env, tmp / "zygote.log")
        self.servers = [self.zygote.spawn(["serve", "--port", str(p), "--import", "support.faults_hooks"],
                                          tmp / f"serve{i}.log") for i, p in enumerate(self.ports)]
        self.workers: list[Proc] = []
        self.ensure_workers()
        from keel.config import Settings
        from engine.runtime import Runtime

        for u in self.urls:
            wait_ok(u, timeout=60)
        self.rt = Runtime(Settings(database_url=pg_url + ("&" if "?" in pg_url else "?") + "application_name=keel_faults",
                                   data_dir=tmp, now=datetime(2026, 11, 25, 12, tzinfo=UTC),
                                   plan_signing_key="faults-key", policy_file=tmp / "policy.toml"))
        self.rt.db  # noqa: B018
        self.wait_workers_ready()

    # -- processes ---------------------------------------------------------------------
    def spawn_worker(self) -> Proc:
        self._spawned += 1
        log = self.tmp / f"worker{self._spawned}.log"
        w = self.zygote.spawn(["worker", "--lease-seconds", str(LEASE_S), "--poll-seconds", "0.05", "--backoff-base",
                               str(BACKOFF_BASE_S), "--backoff-cap", "8", "--import", "support.faults_hooks"], log)
        self._logs[w.pid] = log
        self.workers.append(w)
        return w

    def ensure_workers(self) -> None:
        """Replace dead workers (without waiting for them to be up)."""
        with self._lock:
            self.workers = [w for w in self.workers if w.poll() is None]
            while len(self.workers) < self._n_workers:
                self.spawn_worker()

    def wait_workers_ready(self, timeout: float = 60.0) -> None:
        """Until every worker printed its start line (graphs compiled, hooks installed)."""
        deadline = time.monotonic() + timeout
        for w in self.workers:
            log = self.log_of(w)
            while "keel worker:" not in (log.read_text() if log.exists() else ""):
                assert w.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"worker {w.pid} not up: {log.read_text()[-2000:]}"
                time.sleep(0.05)

    def log_of(self, proc: Proc) -> Path:
        return self._logs[proc.pid]

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.poll() is None]

    def kill(self, pid: int) -> None:
        """SIGKILL a worker and start a replacement (not waiting for it to be up)."""
        with self._lock:
            assert pid in self.worker_pids(), f"{pid} is not a live worker of the cluster"
            os.kill(pid, signal.SIGKILL)
            for w in self.workers:
                if w.pid == pid:
                    w.wait(timeout=10)
            self.ensure_workers()

    def start_killer(self) -> dict[tuple[str, str], int]:
        """SIGKILL every worker as soon as it stops at an armed point (in the background).

        Returns the live map ``(thread_id, point) -> killed pid``."""
        if self._killer is None:
            self._killer = threading.Thread(target=self._kill_loop, name="faults-killer", daemon=True)
            self._killer.start()
        return self.killed

    def stop_killer(self) -> None:
        self._killer_stop.set()
        if self._killer is not None:
            self._killer.join(timeout=5)
        self._killer = None
        self._killer_stop.clear()

    def _kill_loop(self) -> None:
        while not self._killer_stop.wait(0.02):
            for hit in self.faults.glob("hit.*"):
                _, thread_id, point = hit.name.split(".", 2)
                if (thread_id, point) in self.killed:
                    continue
                text = hit.read_text().strip()
                if not text:
                    continue
                pid = int(text)
                try:
                    self.kill(pid)
                except AssertionError as e:  # reported by the test that checks ``killed``
                    self.kill_errors.append(str(e))
                self.killed[(thread_id, point)] = pid

    def close(self) -> None:
        self.stop_killer()
        try:
            self.rt.close()
        finally:
            stop(*self.servers, *self.workers)
            self.zygote.close()

    # -- faults ------------------------------------------------------------------------
    def arm_stop(self, thread_id: str, point: str) -> None:
        (self.faults / f"stop.{thread_id}.{point}").write_text("1")

    def wait_hit(self, thread_id: str, point: str, timeout: float = 30.0) -> int:
        """The pid of the worker stopped at ``point`` (it is hanging there)."""
        return self._wait_pid(f"hit.{thread_id}.{point}", f"no worker reached {point} on {thread_id}", timeout)

    def _wait_pid(self, name: str, failure: str, timeout: float) -> int:
        """The pid a worker writes into ``name`` in the faults directory, once it has."""
        f = self.faults / name
        deadline = time.monotonic() + timeout
        while not f.exists() or not f.read_text().strip():
            assert time.monotonic() < deadline, failure
            time.sleep(0.02)
        return int(f.read_text())

    def arm_pause(self, thread_id: str, point: str, seconds: float) -> None:
        (self.faults / f"pause.{thread_id}.{point}").write_text(str(seconds))

    def wait_paused(self, thread_id: str, point: str, timeout: float = 30.0) -> int:
        """The pid of the worker pausing at ``point``."""
        return self._wait_pid(f"paused.{thread_id}.{point}", f"no worker paused at {point} on {thread_id}", timeout)

    def freeze_workers(self) -> list[int]:
        """SIGSTOP every worker (no run gets claimed until :meth:`thaw_workers`)."""
        with self._lock:
            pids = self.worker_pids()
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            return pids

    def thaw_workers(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def arm_tool(self, tenant: str, tool: str, fail: int, mode: str = "error") -> None:
        (self.faults / f"tools.{tenant}.json").write_text(json.dumps({"tool": tool, "fail": fail, "mode": mode}))

    # -- database ------------------------------------------------------------------------
    def count(self, sql: str, *params: Any) -> int:
        with psycopg.connect(self.pg_url) as c:
            return c.execute(sql, params).fetchone()[0]

    def rows(self, sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.pg_url) as c:
            return c.execute(sql, params).fetchall()


_CLUSTER: Cluster | None = None


def get_cluster(pg_url: str, tmp: Path) -> Cluster:
    """The process's fault cluster (started on first call)."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = Cluster(pg_url, tmp)
    _CLUSTER.ensure_workers()
    return _CLUSTER


def close_cluster() -> None:
    global _CLUSTER
    if _CLUSTER is not None:
        _CLUSTER.close()
        _CLUSTER = None


def postgres_cluster_of(url: str) -> tuple[str, str]:
    """``(version, name)`` of the local PostgreSQL cluster listening on ``url``'s port."""
    port = str(urlsplit(url).port or 5432)
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[2] == port:
            return f[0], f[1]
    raise AssertionError(f"no local PostgreSQL cluster on port {port}: {out}")


def _fixture():
    import pytest

    @pytest.fixture(scope="session")
    def faults_cluster(faults_pg_url, tmp_path_factory):
        """The shared fault cluster (see :func:`get_cluster`) on a database of its own;
        stopped at session end."""
        c = get_cluster(faults_pg_url, tmp_path_factory.mktemp("faults"))
        yield c
        close_cluster()

    return faults_cluster


faults_cluster = _fixture()
