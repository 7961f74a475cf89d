"""keel behind PgBouncer in transaction mode (issue #13, part 3).

``keel serve`` and ``keel worker`` run on ``KEEL_DATABASE_URL`` pointing at a private
pgbouncer (``pool_mode = transaction``, 4 server connections for about 20 client
connections), with ``KEEL_DATABASE_DIRECT_URL`` at the server itself for the LISTEN
connection. Support tickets run to completion (one waits for approval, is approved and
finishes), many runs at once share the small pool without a prepared-statement error
(``prepared statement "_pg3_0" does not exist``) or a lost run, and a pooler restart in
the middle of runs is survived. In-process: the set-up lock excludes other processes
through the pooler (and its waiters pin no server connection), the queue's LISTEN gets its
notifications on the direct connection, the pool prepares no statement server-side, and a
transaction or a read that the pooler refuses at once (``query_wait_timeout``) is retried.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from conftest import _own_database
from support.api_helpers import (
    ROOT, demo_tickets, free_port, keel_env, load_demo, new_tenant, spawn, stop, wait_ok, wait_worker,
)
from support.pgbouncer import POOL_SIZE, PgBouncer, pgbouncer  # noqa: F401

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

END_STATES = ("completed", "awaiting_approval", "escalated", "rejected")
PREPARED_ERRORS = ("prepared statement", "_pg3_")
"""What a server-side prepared statement used through a transaction pooler fails with."""


@pytest.fixture(scope="module")
def direct_url() -> Iterator[str]:
    """A database of this module's own: its worker claims every queued run of its database."""
    yield from _own_database("keel_tpgb")


@pytest.fixture(scope="module")
def pooled(pgbouncer: PgBouncer, direct_url: str) -> str:
    """The module's database through the pooler."""
    return pgbouncer.url_for(direct_url) + "?application_name=keel_pgb"


@pytest.fixture(scope="module")
def stack(pgbouncer: PgBouncer, direct_url: str, pooled: str, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A server and a worker (4 threads) on the database through the pooler."""
    from engine.runtime import Runtime
    from keel.config import Settings

    tmp = tmp_path_factory.mktemp("pgbouncer")
    env = keel_env(KEEL_DATABASE_URL=pooled, KEEL_DATABASE_DIRECT_URL=direct_url, KEEL_DATA_DIR=str(tmp),
                   KEEL_DATABASE_PREPARED_STATEMENTS="false",
                   KEEL_PLAN_SIGNING_KEY="pgb-key", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    port = free_port()
    # both start at once on a fresh database: their set-ups serialize on the set-up lock
    server = spawn(env, "serve", "--port", str(port), "--import", "support.api_toy", log=tmp / "serve.log")
    worker = spawn(env, "worker", "--concurrency", "4", "--poll-seconds", "0.1", "--lease-seconds", "5",
                   "--import", "support.api_toy", log=tmp / "worker.log")
    rt = Runtime(Settings(database_url=pooled, database_direct_url=direct_url, data_dir=tmp,
                          database_prepared_statements=False))
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ok(url, timeout=120, proc=server)  # imports alone take 30 s on a loaded 2-core machine
        wait_worker(tmp / "worker.log", worker)
        tenant = new_tenant()
        load_demo(rt, tenant)
        keys = {role: rt.principals.create_key(tenant, f"{role}-user", role) for role in ("requester", "approver")}
        yield {"url": url, "tenant": tenant, "keys": keys, "server": server, "worker": worker, "tmp": tmp,
               "direct": direct_url, "pooled": pooled, "bouncer": pgbouncer}
    finally:
        rt.close()
        stop(server, worker)


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _logs(s: dict[str, Any]) -> str:
    return "".join((s["tmp"] / f).read_text(errors="replace") for f in ("serve.log", "worker.log"))


def _call(method: str, url: str, *, attempts_s: float = 15.0, **kw: Any) -> httpx.Response:
    """One request, repeated while the server answers 503 (its ``Retry-After``: the database
    was briefly unavailable) or the connection fails, as a client following the contract does."""
    deadline = time.monotonic() + attempts_s
    while True:
        try:
            r = httpx.request(method, url, timeout=30, **kw)
            if r.status_code != 503:
                return r
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{method} {url}: still unavailable after {attempts_s}s"
        time.sleep(0.2)


def _thread(s: dict[str, Any]) -> str:
    r = _call("POST", f"{s['url']}/threads", json={}, headers=_h(s["keys"]["requester"]))
    assert r.status_code == 200, r.text
    return r.json()["thread_id"]


def _start(s: dict[str, Any], tid: str, assistant: str, payload: dict[str, Any]) -> str:
    r = _call("POST", f"{s['url']}/threads/{tid}/runs", json={"assistant_id": assistant, "input": payload},
              headers=_h(s["keys"]["requester"]))
    assert r.status_code == 200, r.text
    return r.json()["run_id"]


def _wait(s: dict[str, Any], tid: str, rid: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = _call("GET", f"{s['url']}/threads/{tid}/runs/{rid}", headers=_h(s["keys"]["requester"]))
        assert r.status_code == 200, r.text
        if r.json()["status"] not in ("pending", "running"):
            return r.json()
        assert time.monotonic() < deadline, f"run {rid} still {r.json()['status']} after {timeout}s"
        time.sleep(0.1)


def _values(s: dict[str, Any], tid: str) -> dict[str, Any]:
    r = _call("GET", f"{s['url']}/threads/{tid}/state", headers=_h(s["keys"]["requester"]))
    assert r.status_code == 200, r.text
    return r.json()["values"]


def _clients(bouncer: PgBouncer, db: str) -> int:
    """Client connections pgbouncer holds for database ``db``."""
    rows = bouncer.admin("SHOW CLIENTS")
    return sum(1 for r in rows if db in r)


def test_tickets_and_an_approval_through_the_pooler(stack):
    s = stack
    tickets = demo_tickets(s["tenant"])
    runs = []
    for ticket in ("T-1", "T-5", "T-23"):
        tid = _thread(s)
        runs.append((ticket, tid, _start(s, tid, "support", {"ticket": tickets[ticket]})))
    for ticket, tid, rid in runs:
        assert _wait(s, tid, rid)["status"] == "success", ticket
        assert _values(s, tid).get("status") in END_STATES, ticket
    tid = runs[-1][1]
    assert _values(s, tid)["status"] == "awaiting_approval"
    pending = _call("GET", f"{s['url']}/approvals/{tid}", headers=_h(s["keys"]["approver"]))
    assert pending.status_code == 200, pending.text
    r = _call("POST", f"{s['url']}/approvals/{tid}/approve", headers=_h(s["keys"]["approver"]),
              json={"plan_hash": pending.json()["plan_hash"], "reason": "ok"})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["status"] == "completed", r.json()
    assert _values(s, tid)["status"] == "completed"
    assert not any(m in _logs(s) for m in PREPARED_ERRORS), _logs(s)[-3000:]


def test_many_runs_at_once_on_a_small_pool(stack):
    s = stack
    tickets = demo_tickets(s["tenant"])
    jobs = [("toy_slow", {"sleep": 0.05})] * 16 + [("support", {"ticket": tickets[t]}) for t in ("T-1", "T-4", "T-5", "T-7")]

    def one(job: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        tid = _thread(s)
        return tid, _wait(s, tid, _start(s, tid, *job), timeout=60)

    with ThreadPoolExecutor(10) as ex:
        fut = ex.map(one, jobs)
        # more client connections than the pooler has server connections for this database
        deadline = time.monotonic() + 10
        most = 0
        while most <= POOL_SIZE and time.monotonic() < deadline:
            most = max(most, _clients(s["bouncer"], s["direct"].rsplit("/", 1)[1]))
            time.sleep(0.05)
        results = list(fut)
    assert most > POOL_SIZE, most
    assert len(results) == len(jobs)
    bad = [(r["run_id"], r["status"], r["error"]) for _, r in results if r["status"] != "success"]
    assert not bad, bad
    with psycopg.connect(s["direct"]) as c:
        lost = c.execute("SELECT COUNT(*) FROM api_runs WHERE status IN ('pending', 'running')").fetchone()[0]
        assert lost == 0
    assert not any(m in _logs(s) for m in PREPARED_ERRORS), _logs(s)[-3000:]


def test_a_pooler_restart_mid_run_is_survived(stack):
    s = stack
    runs = []
    for _ in range(6):
        tid = _thread(s)
        runs.append((tid, _start(s, tid, "toy_slow", {"sleep": 1.0})))
    with psycopg.connect(s["direct"], autocommit=True) as c:
        deadline = time.monotonic() + 15
        while c.execute("SELECT COUNT(*) FROM api_runs WHERE run_id = ANY(%s) AND status = 'running'",
                        ([r for _, r in runs],)).fetchone()[0] < 2:
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)
    s["bouncer"].restart()  # every client connection of the server and the worker is cut
    time.sleep(0.3)
    s["bouncer"].admin("RECONNECT")  # and every server connection is replaced once released
    for tid, rid in runs:
        run = _wait(s, tid, rid, timeout=45)
        assert run["status"] == "success", run
        assert _values(s, tid).get("done") is True
    assert s["server"].poll() is None and s["worker"].poll() is None, _logs(s)[-3000:]
    # the restart did cut connections in use or pooled (else this test proved nothing)
    assert any(m in _logs(s) for m in ("server closed the connection", "discarding closed connection")), \
        _logs(s)[-3000:]
    # served at once after the restart, without a 5xx
    r = httpx.get(f"{s['url']}/threads/{runs[0][0]}/runs/{runs[0][1]}", headers=_h(s["keys"]["requester"]), timeout=10)
    assert r.status_code == 200, r.text
    assert not any(m in _logs(s) for m in PREPARED_ERRORS), _logs(s)[-3000:]


# -- in process ------------------------------------------------------------------------------
def test_the_setup_lock_excludes_other_processes_through_the_pooler(pgbouncer, direct_url, tmp_path):
    """Three runtimes reach the database through a pooler of 2 server connections only (no
    direct URL). A session advisory lock would be taken on whichever server connection
    pgbouncer lent, and another process handed that same connection would take it too; and
    the processes waiting for the lock must not pin the server connection that the holder's
    set-up needs."""
    from engine.runtime import SETUP_LOCK, Runtime
    from keel.config import Settings

    tight = PgBouncer(pgbouncer.binary, direct_url, pool_size=2, query_wait_timeout=3)
    url = tight.url_for(direct_url)
    one, two, three = (Runtime(Settings(database_url=url, data_dir=tmp_path, database_prepared_statements=False))
                       for _ in range(3))
    entered = {two: threading.Event(), three: threading.Event()}

    def waiter(rt: Runtime) -> None:
        with rt.setup_lock():
            entered[rt].set()

    try:
        with one.setup_lock():
            threads = [threading.Thread(target=waiter, args=(rt,), daemon=True) for rt in (two, three)]
            for t in threads:
                t.start()
            assert not any(e.wait(0.75) for e in entered.values()), "another process entered the held set-up lock"
            # the holder's set-up gets a server connection while the others wait
            t0 = time.monotonic()
            with psycopg.connect(url, autocommit=True, prepare_threshold=None) as c:
                assert c.execute("SELECT 1").fetchone()[0] == 1
            assert time.monotonic() - t0 < 2.0, "the waiting processes pinned the pooler's server connections"
            assert not any(e.is_set() for e in entered.values())
        assert all(e.wait(10) for e in entered.values()), "a waiting process never got the set-up lock"
        for t in threads:
            t.join(5)
        with psycopg.connect(direct_url) as c:
            held = c.execute("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND database ="
                             " (SELECT oid FROM pg_database WHERE datname = current_database())",
                             (SETUP_LOCK & 0xFFFFFFFF,)).fetchone()[0]
        assert held == 0, "the set-up lock was left held on a pooled server connection"
    finally:
        for rt in (one, two, three):
            rt.close()
        tight.close()


def test_listen_uses_the_direct_connection(pooled, direct_url):
    """The queue's listener hears a NOTIFY at once: on a pooled connection it would LISTEN on
    a server connection pgbouncer hands to other clients, and hear nothing."""
    from engine.queue import RunQueue
    from engine.queue.base import CHANNEL
    from keel.db import Database

    db = Database(pooled + "&application_name=keel_pgb_listen", direct_url=direct_url, prepared_statements=False)
    queue = RunQueue(db)
    try:
        assert queue.start_listener()
        deadline = time.monotonic() + 10
        while not queue.listening:
            assert time.monotonic() < deadline, "the listener never connected"
            time.sleep(0.05)
        with psycopg.connect(direct_url, autocommit=True) as c:
            listening = c.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                                  " AND query = %s", (f"LISTEN {CHANNEL}",)).fetchone()[0]
            assert listening >= 1
            seen = queue.version()
            c.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        assert queue.wait_change(seen, 5.0) != seen, "the NOTIFY never reached the listener"
    finally:
        queue.stop_listener()
        db.close()


def test_no_server_side_prepared_statements_on_the_pool(pooled):
    """Threads sharing keel's pool through the pooler repeat the same statements: prepared
    server-side (psycopg's ``prepare_threshold=0``) they would meet server connections that
    do not know them (``prepared statement "_pg3_0" does not exist``) or already do."""
    from keel.db import Database

    db = Database(pooled.replace("keel_pgb", "keel_pgb_prep"), prepared_statements=False)
    errors: list[str] = []

    def hammer(i: int) -> None:
        for n in range(40):
            try:
                with db.transaction() as tx:
                    assert tx.fetchone("SELECT ? + ? AS v", (i, n))["v"] == i + n
                assert db.fetchone("SELECT COUNT(*) AS n FROM pg_class WHERE relname = ?", ("pg_class",))["n"] == 1
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{type(e).__name__}: {e}")
                return

    try:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(hammer, range(8)))
    finally:
        db.close()
    assert not errors, errors[:3]



@pytest.mark.parametrize("how", ["transaction", "read"])
def test_a_pooler_error_at_begin_is_retried(pgbouncer, direct_url, how):
    """A transaction whose BEGIN the pooler refuses (``query_wait_timeout``: no server
    connection came free in time, and the client connection is closed) ran nothing: keel
    begins it again on another connection instead of failing its caller; a single read is
    read again."""
    from keel.db import Database

    tight = PgBouncer(pgbouncer.binary, direct_url, pool_size=1, query_wait_timeout=1)
    db = None
    try:
        holder = psycopg.connect(tight.url_for(direct_url))
        holder.execute("SELECT 1")  # a transaction left open: the pooler's one server connection is taken
        db = Database(tight.url_for(direct_url) + f"?application_name=keel_pgb_{how}", prepared_statements=False)
        released = threading.Event()

        def release_after_the_first_refusal() -> None:
            deadline = time.monotonic() + 10
            while "query_wait_timeout" not in tight.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            holder.commit()
            released.set()

        threading.Thread(target=release_after_the_first_refusal, daemon=True).start()
        if how == "transaction":
            with db.transaction() as tx:
                assert tx.fetchone("SELECT 41 + 1 AS v")["v"] == 42
        else:
            assert db.fetchone("SELECT 41 + 1 AS v")["v"] == 42
        assert released.is_set()
        assert "query_wait_timeout" in tight.log_text()
        holder.close()
    finally:
        if db is not None:
            db.close()
        tight.close()
