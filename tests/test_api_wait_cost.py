"""What a request costs the API server: a waiting ``runs/wait``/``join`` reads nothing until
its run's notification arrives (and polls again when the queue's listener is gone); the key
is read, and its request spent, in one statement that still sees a revoke at once on every
server (``bench/serve_cpu.py`` measures the CPU and statements per run)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from api import services
from api.services import await_run
from support.api_fixtures import api_pg_url, api_runtime  # noqa: F401


class FakeQueue:
    """The part of :class:`engine.queue.RunQueue` a waiter uses, counting every read."""

    def __init__(self, listening: bool = True) -> None:
        self.listening = listening
        self.status = "pending"
        self.reads: Counter[str] = Counter()
        self.events: set[asyncio.Event] = set()

    @contextmanager
    def done_event(self, run_id: str) -> Iterator[asyncio.Event]:
        ev = asyncio.Event()
        self.events.add(ev)
        try:
            yield ev
        finally:
            self.events.discard(ev)

    def poll_cap(self, poll_s: float) -> float:
        """As the real queue's (what the waiter before this change polled at)."""
        return max(poll_s, 1.0) if self.listening else poll_s

    def run_status(self, run_id: str) -> str:
        self.reads["run_status"] += 1
        return self.status

    def get_run(self, tenant: str, thread_id: str, run_id: str) -> dict[str, Any]:
        self.reads["get_run"] += 1
        return {"run_id": run_id, "thread_id": thread_id, "tenant": tenant, "status": self.status}

    def end(self, notify: bool = True) -> None:
        """The run ends (a worker elsewhere); ``notify``: its NOTIFY reaches this process."""
        self.status = "success"
        if notify:
            for ev in list(self.events):
                ev.set()


RUN = {"run_id": "r1", "thread_id": "t1", "tenant": "acme", "status": "pending"}


def test_a_waiter_reads_nothing_until_its_run_is_notified():
    """While the listener runs, a waiting request makes one read when it starts and one when
    its run's NOTIFY arrives: no status poll in between (it used to poll once a second)."""
    q = FakeQueue()

    async def go() -> Any:
        waiting = asyncio.ensure_future(await_run(q, RUN))
        await asyncio.sleep(2.6)
        assert not waiting.done()
        assert q.reads == Counter(run_status=1), q.reads
        q.end()
        return await asyncio.wait_for(waiting, 2)

    row = asyncio.run(go())
    assert row["status"] == "success"
    assert q.reads == Counter(run_status=1, get_run=1), q.reads


def test_a_waiter_registered_before_the_run_existed_needs_no_first_read():
    q = FakeQueue()

    async def go() -> Any:
        with q.done_event(RUN["run_id"]) as ev:
            waiting = asyncio.ensure_future(await_run(q, RUN, registered=ev, then=lambda row: {"out": row["status"]}))
            await asyncio.sleep(0.3)
            assert q.reads == Counter(), q.reads
            q.end()
            return await asyncio.wait_for(waiting, 2)

    assert asyncio.run(go()) == {"out": "success"}
    assert q.reads == Counter(get_run=1), q.reads  # the row and ``then`` in one read


def test_a_run_ended_before_the_waiter_registered_is_seen_by_its_first_read():
    q = FakeQueue()
    q.end(notify=False)
    row = asyncio.run(asyncio.wait_for(await_run(q, RUN), 2))
    assert row["status"] == "success" and q.reads == Counter(run_status=1, get_run=1)


def test_waiters_poll_when_the_listener_stops(monkeypatch):
    """A notification sent while the listener is away is lost: the listener's watch wakes the
    waiters, which then poll the run's status until it ends."""
    monkeypatch.setattr(services, "LISTENER_CHECK_S", 0.05)
    q = FakeQueue()

    async def go() -> float:
        waiting = asyncio.ensure_future(await_run(q, RUN, poll_s=0.05))
        await asyncio.sleep(0.2)
        q.listening = False  # the listener lost its connection ...
        q.end(notify=False)  # ... and the run's NOTIFY with it
        t0 = time.monotonic()
        row = await asyncio.wait_for(waiting, 3)
        assert row["status"] == "success"
        return time.monotonic() - t0

    assert asyncio.run(go()) < 1.0
    assert not services._watches  # the watch went with its last waiter


def test_without_a_listener_a_waiter_polls():
    """SQLite (no LISTEN) and a cross-process end: polled within ``poll_s``."""
    q = FakeQueue(listening=False)

    async def go() -> None:
        waiting = asyncio.ensure_future(await_run(q, RUN, poll_s=0.05))
        await asyncio.sleep(0.3)
        q.end(notify=False)
        assert (await asyncio.wait_for(waiting, 1))["status"] == "success"

    asyncio.run(go())
    assert q.reads["run_status"] >= 5


def test_a_timeout_returns_the_run_still_in_flight():
    q = FakeQueue()
    row = asyncio.run(await_run(q, RUN, timeout=0.2))
    assert row["status"] == "pending"


# -- the key and its rate limit in one statement, on Postgres ---------------------------------------
@pytest.mark.postgres
def test_a_revoked_key_is_refused_at_once_by_every_server(api_runtime, api_pg_url, tmp_path):
    """Two API servers on one database, and the key revoked from a third process's store (the
    CLI's ``keel keys revoke``): the very next request on either server is 401."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from engine.runtime import Runtime
    from keel.config import Settings

    tenant = f"t{uuid.uuid4().hex[:10]}"
    key = api_runtime.principals.create_key(tenant, "rita", "requester")
    a = create_app(api_runtime, embedded_worker=False)
    b = create_app(api_runtime, embedded_worker=False)
    other = Runtime(Settings(database_url=api_pg_url + "&application_name=keel_revoker", data_dir=tmp_path))
    try:
        with TestClient(a) as ca, TestClient(b) as cb:
            for c in (ca, cb, ca, cb):
                assert c.post("/assistants/search", json={}, headers={"x-api-key": key}).status_code == 200
            assert other.principals.revoke(key)
            for c in (cb, ca):
                r = c.post("/assistants/search", json={}, headers={"x-api-key": key})
                assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
    finally:
        other.close()


@pytest.mark.postgres
def test_one_statement_reads_the_key_and_spends_its_request(api_runtime):
    """:meth:`SharedRateLimiter.key_and_take` answers like ``authenticate`` then ``take``: the
    key's row, or None for an unknown or revoked key, which spends nothing."""
    from api.ratelimit import SharedRateLimiter
    from keel.principals import hash_key

    lim = SharedRateLimiter(api_runtime.db, per_minute=60, burst=2).setup()
    tenant = f"t{uuid.uuid4().hex[:10]}"
    key = api_runtime.principals.create_key(tenant, "rita", "requester")
    row, wait = lim.key_and_take(hash_key(key))
    assert row == {"tenant": tenant, "user_id": "rita", "role": "requester", "expires_at": None} and wait == 0.0
    assert lim.key_and_take(hash_key(key))[1] == 0.0  # the burst is two
    assert lim.key_and_take(hash_key(key))[1] == pytest.approx(1.0, abs=0.2)  # then one a second
    unknown = hashlib.sha256(b"no such key").hexdigest()
    assert lim.key_and_take(unknown) == (None, 0.0)
    with api_runtime.db.pool.connection() as conn:
        spent = conn.execute("SELECT count(*) AS n FROM api_rate_limits WHERE key_digest = %s", (unknown,)).fetchone()
    assert spent["n"] == 0
    assert api_runtime.principals.revoke(key)
    assert lim.key_and_take(hash_key(key)) == (None, 0.0)
    off = SharedRateLimiter(api_runtime.db, per_minute=0)
    key2 = api_runtime.principals.create_key(tenant, "ravi", "requester")
    assert [off.key_and_take(hash_key(key2))[1] for _ in range(5)] == [0.0] * 5


@pytest.mark.postgres
def test_an_expired_key_is_refused(api_runtime):
    from fastapi.testclient import TestClient

    from api.app import create_app

    from keel.principals import PrincipalStore

    tenant = f"t{uuid.uuid4().hex[:10]}"
    now = api_runtime.principals.clock()
    live = api_runtime.principals.create_key(tenant, "rita", "requester", expires_in=timedelta(days=1))
    past = PrincipalStore(api_runtime.db, clock=lambda: now - timedelta(days=2))  # issued two days ago ...
    gone = past.create_key(tenant, "ravi", "requester", expires_in=timedelta(days=1))  # ... for one
    with TestClient(create_app(api_runtime, embedded_worker=False)) as c:
        assert c.post("/assistants/search", json={}, headers={"x-api-key": live}).status_code == 200
        assert c.post("/assistants/search", json={}, headers={"x-api-key": gone}).status_code == 401
