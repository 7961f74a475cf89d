"""Start-up next to a database that is down or restarting, and requests during an outage.

``keel worker`` and ``keel serve`` retry their start-up with exponential backoff and jitter
while the database is unavailable (bounded by ``KEEL_STARTUP_TIMEOUT_S``), logging each
retry, and fail fast with one clear line on configuration errors. A request that needs the
database during an outage is answered 503 with ``Retry-After`` within seconds.

The outages happen on a private PostgreSQL server (:mod:`support.private_pg`), never on the
shared one. The processes are real ``keel`` processes, forked from a pre-imported
interpreter (:class:`support.faults_cluster.Zygote`) so that the module stays fast.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg_pool
import pytest

from keel.db import StartupError, db_error_kind, retry_while_unavailable
from support.api_helpers import ROOT, free_port, keel_env, stop, wait_ok
from support.private_pg import PrivatePostgres, private_pg  # noqa: F401

RETRY_LINE = "database unavailable, retrying in"


# -- classification and the retry loop (no database needed) ---------------------------------
@pytest.mark.parametrize("exc,kind", [
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), "unavailable"),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), "unavailable"),
    (psycopg.errors.TooManyConnections("sorry, too many clients already"), "unavailable"),
    (psycopg.errors.DeadlockDetected("deadlock detected"), "unavailable"),
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5 failed: '
                              "Connection refused\n\tIs the server running on that host?"), "unavailable"),
    (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"), "unavailable"),
    (psycopg.OperationalError("failed to resolve host 'db': [Errno -3] Temporary failure in name resolution"),
     "unavailable"),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 3.00 sec"), "unavailable"),
    (psycopg.InterfaceError("the connection is closed"), "unavailable"),
    (ConnectionRefusedError(111, "Connection refused"), "unavailable"),
    (RuntimeError("set-up failed"), "other"),
    (psycopg.OperationalError('connection failed: ... FATAL:  password authentication failed for user "keel"'),
     "config"),
    (psycopg.OperationalError('connection failed: ... FATAL:  role "nobody" does not exist'), "config"),
    (psycopg.OperationalError('connection failed: ... FATAL:  database "nope" does not exist'), "config"),
    (psycopg.OperationalError('connection failed: ... FATAL:  no pg_hba.conf entry for host "10.0.0.1"'), "config"),
    (psycopg.OperationalError('connection is bad: invalid integer value "abc" for connection option "port"'),
     "config"),
    (psycopg.errors.InvalidPassword("password authentication failed"), "config"),
    (psycopg.errors.InsufficientPrivilege("permission denied for schema public"), "config"),
    (psycopg.errors.UndefinedTable('relation "x" does not exist'), "other"),  # a bug, not an outage
    (ValueError("bad"), "other"),
])
def test_database_errors_are_classified(exc, kind):
    assert db_error_kind(exc) == kind


def test_the_cause_of_a_wrapped_error_decides():
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        except psycopg.Error as e:
            raise RuntimeError("checkpointer set-up failed") from e
    except RuntimeError as wrapped:
        assert db_error_kind(wrapped) == "unavailable"


def test_start_up_retries_with_growing_jittered_delays_and_logs_each_retry(caplog):
    calls, sleeps = [], []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= 4:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        return "up"

    random.seed(7)
    with caplog.at_level(logging.WARNING, logger="keel.db"):
        assert retry_while_unavailable(fn, timeout_s=60, what="keel worker", sleep=sleeps.append) == "up"
    assert len(calls) == 5 and len(sleeps) == 4
    for i, s in enumerate(sleeps):  # keel.retry: 0.5 s doubling, capped at 5 s, half of it jitter
        full = min(5.0, 0.5 * 2 ** i)
        assert full / 2 <= s <= full, sleeps
    assert len(set(round(s / min(5.0, 0.5 * 2 ** i), 6) for i, s in enumerate(sleeps))) > 1, "no jitter"
    lines = [r.getMessage() for r in caplog.records if RETRY_LINE in r.getMessage()]
    assert len(lines) == 4
    assert lines[0].startswith(f"keel worker: {RETRY_LINE} {sleeps[0]:.1f}s: terminating connection due to administrator")


def test_configuration_errors_fail_at_once_and_other_errors_pass_through():
    calls = []

    def bad_password() -> None:
        calls.append(1)
        raise psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "keel"')

    with pytest.raises(StartupError, match=r"^database configuration error \(check KEEL_DATABASE_URL\): "
                                           r"connection failed: FATAL: password authentication failed"):
        retry_while_unavailable(bad_password, timeout_s=60, what="keel serve", sleep=lambda s: None)
    assert len(calls) == 1

    def bug() -> None:
        raise KeyError("graph")

    with pytest.raises(KeyError):
        retry_while_unavailable(bug, timeout_s=60, what="keel serve", sleep=lambda s: None)


def test_an_outage_longer_than_the_timeout_ends_start_up_with_a_clear_error():
    t0 = time.monotonic()

    def down() -> None:
        raise psycopg.OperationalError("connection failed: Connection refused")

    with pytest.raises(StartupError, match=r"^database still unavailable after 0.4s: connection failed: Connection refused"):
        retry_while_unavailable(down, timeout_s=0.4, what="keel worker", base_s=0.05, cap_s=0.1)
    assert time.monotonic() - t0 < 1.0


def _cli(monkeypatch, command: str, **env: str) -> int:
    """``keel COMMAND`` in this process with ``env`` as its KEEL_* settings."""
    import cli.service
    from keel.config import get_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(cli.service, "_logging", lambda: None)  # leave pytest's log handlers alone
    get_settings.cache_clear()
    try:
        return cli.service.main([command, "--port", str(free_port())] if command == "serve" else [command])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_cli_gives_up_after_the_start_up_timeout(monkeypatch, capsys, caplog, tmp_path, command):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/keel"  # nothing listens there
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="keel.db"):
        rc = _cli(monkeypatch, command, KEEL_DATABASE_URL=url, KEEL_STARTUP_TIMEOUT_S="2.5",
                  KEEL_DATA_DIR=str(tmp_path))
    assert rc == 2 and time.monotonic() - t0 < 6
    err = capsys.readouterr().err
    assert f"keel {command}: cannot start: database still unavailable after 2.5s: " in err and "Traceback" not in err
    assert any(f"keel {command}: {RETRY_LINE}" in r.getMessage() for r in caplog.records)


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_cli_fails_fast_on_an_unknown_database(monkeypatch, capsys, caplog, tmp_path, private_pg, command):
    url = private_pg.url("no_such_db")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="keel.db"):
        rc = _cli(monkeypatch, command, KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(tmp_path))
    assert rc == 2 and time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert f"keel {command}: cannot start: database configuration error (check KEEL_DATABASE_URL): " in err
    assert 'database "no_such_db" does not exist' in err and "Traceback" not in err
    assert not any(RETRY_LINE in r.getMessage() for r in caplog.records)


# -- real processes against a database that is down or restarting -------------------------------
@dataclass
class Stack:
    """``keel`` processes on the private server's database ``url``."""

    pg: PrivatePostgres
    url: str
    tmp: Path
    zygote: Any
    procs: list[Any] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    def spawn(self, *argv: str) -> Any:
        log = self.tmp / f"{argv[0]}{len(self.procs)}.log"
        p = self.zygote.spawn([*argv, "--import", "support.api_toy"], log)
        self.procs.append(p)
        self.logs[p.pid] = log
        return p

    def worker(self) -> Any:
        return self.spawn("worker", "--poll-seconds", "0.05")

    def serve(self) -> tuple[Any, str]:
        port = free_port()
        return self.spawn("serve", "--port", str(port)), f"http://127.0.0.1:{port}"

    def log(self, p: Any) -> str:
        return self.logs[p.pid].read_text() if self.logs[p.pid].exists() else ""

    def wait_log(self, p: Any, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log(p):
            assert p.poll() is None, f"process exited: {self.log(p)[-3000:]}"
            assert time.monotonic() < deadline, f"{text!r} not logged: {self.log(p)[-3000:]}"
            time.sleep(0.05)

    def keys(self) -> dict[str, str]:
        """A tenant with a requester key (made in this process; its pool closed after)."""
        from keel.config import Settings
        from engine.runtime import Runtime

        rt = Runtime(Settings(database_url=self.url, data_dir=self.tmp / "rt", plan_signing_key="startup-key"))
        try:
            tenant = "t" + str(time.time_ns())[-10:]
            return {"x-api-key": rt.principals.create_key(tenant, "rita", "requester")}
        finally:
            rt.close()


@pytest.fixture(scope="module")
def stack(private_pg, tmp_path_factory):
    from support.faults_cluster import Zygote

    name = f"keel_startup_{time.time_ns() % 10**9}"
    url = private_pg.create_database(name)
    tmp = tmp_path_factory.mktemp("startup")
    env = keel_env(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(tmp), KEEL_PLAN_SIGNING_KEY="startup-key",
                   KEEL_STARTUP_TIMEOUT_S="60", KEEL_DB_POOL_TIMEOUT_S="3", PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}")
    s = Stack(private_pg, url, tmp, Zygote(env, tmp / "zygote.log"))
    try:
        yield s
    finally:
        stop(*s.procs)
        s.zygote.close()
        if not private_pg.running:
            private_pg.start()


def _run_completes(url: str, headers: dict[str, str], timeout: float = 30.0) -> dict[str, Any]:
    """Submit a toy run and wait for a worker to finish it."""
    tid = httpx.post(f"{url}/threads", json={}, headers=headers, timeout=10).json()["thread_id"]
    r = httpx.post(f"{url}/threads/{tid}/runs", json={"assistant_id": "toy_flaky", "input": {"fail_times": 0}},
                   headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    rid = r.json()["run_id"]
    deadline = time.monotonic() + timeout
    while (run := httpx.get(f"{url}/threads/{tid}/runs/{rid}", headers=headers, timeout=10).json())["status"] in (
            "pending", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    return run


@pytest.fixture(scope="module")
def started(stack) -> dict[str, Any]:
    """A worker and a server started while the database is down, then the database started."""
    stack.pg.stop()
    worker = stack.worker()
    server, url = stack.serve()
    for p in (worker, server):
        stack.wait_log(p, RETRY_LINE)  # both are up to their first database access, and waiting
    stack.pg.start()
    back = time.monotonic()
    wait_ok(url, timeout=30)
    stack.wait_log(worker, "keel worker:", timeout=30)
    return {"worker": worker, "server": server, "url": url, "up_after": time.monotonic() - back}


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_and_server_started_while_the_database_is_down_serve_once_it_is_back(stack, started):
    assert started["up_after"] < 15, started
    for p in (started["worker"], started["server"]):
        log = stack.log(p)
        assert f"{RETRY_LINE} " in log and "Connection refused" in log, log[-2000:]
        assert "Traceback" not in log, log[-3000:]
    run = _run_completes(started["url"], stack.keys())
    assert run["status"] == "success"


@pytest.mark.slow
@pytest.mark.postgres
def test_submission_during_an_outage_gets_503_with_retry_after_within_seconds(stack, started):
    url, h = started["url"], stack.keys()
    tid = httpx.post(f"{url}/threads", json={}, headers=h, timeout=10).json()["thread_id"]
    stack.pg.stop()
    try:
        for path, body in ((f"/threads/{tid}/runs", {"assistant_id": "toy_flaky", "input": {}}),
                           ("/threads", {})):
            t0 = time.monotonic()
            r = httpx.post(url + path, json=body, headers=h, timeout=20)
            took = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["code"] == "unavailable", r.text
            assert int(r.headers["Retry-After"]) >= 1
            assert took < 5, f"{path}: 503 after {took:.1f}s"
    finally:
        stack.pg.start()
    # once the database is back the same submission goes through within seconds, and runs
    back = time.monotonic()
    while (r := httpx.post(f"{url}/threads/{tid}/runs", json={"assistant_id": "toy_flaky", "input": {}},
                           headers=h, timeout=20)).status_code == 503:
        assert time.monotonic() - back < 5, r.text
        time.sleep(0.1)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while (run := httpx.get(f"{url}/threads/{tid}/runs/{r.json()['run_id']}", headers=h, timeout=10).json())[
            "status"] in ("pending", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.05)
    assert run["status"] == "success", run
    assert started["server"].poll() is None and started["worker"].poll() is None


@pytest.mark.slow
@pytest.mark.postgres
def test_worker_and_server_ride_out_a_restart_in_the_middle_of_start_up(stack, started):
    """The reported failure: the server restarts while a starting process holds a session
    (here: waiting for the set-up lock, which this test holds): that session dies with
    ``AdminShutdown``. The process retries and comes up."""
    from engine.runtime import SETUP_LOCK

    holder = psycopg.connect(stack.url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (SETUP_LOCK,))
    worker = stack.worker()
    server, url = stack.serve()
    deadline = time.monotonic() + 60
    polling = "SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_try_advisory_%%lock%%' AND pid <> pg_backend_pid()"
    while holder.execute(polling).fetchone()[0] < 2:  # both wait for the set-up lock, sessions open
        for p in (worker, server):
            assert p.poll() is None, stack.log(p)[-3000:]
        assert time.monotonic() < deadline, "the processes never reached the set-up lock"
        time.sleep(0.05)
    stack.pg.restart()
    holder.close()
    wait_ok(url, timeout=30)
    stack.wait_log(worker, "keel worker:", timeout=30)
    for p in (worker, server):
        log = stack.log(p)
        # the restart reaches the client as the server's FATAL message, or (when the socket
        # closes first, as under load) as libpq's "server closed the connection"
        assert RETRY_LINE in log and ("terminating connection due to administrator command" in log
                                      or "server closed the connection unexpectedly" in log), log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    run = _run_completes(url, stack.keys())
    assert run["status"] == "success"
