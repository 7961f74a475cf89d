"""Runs that wait cost a worker process almost nothing (issue #13): one heartbeat loop
for every held run, not a thread per run; a queued run wakes one idle worker thread, and
a finished run none.

Unit level on the real queue (SQLite, and Postgres in a database of its own): runs are
claimed by hand and held by :class:`engine.worker.Heartbeats`; nothing executes a graph.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import _own_database

LEASE_S = 2.0
"""Short leases: the loop reads flags and extends leases every 0.67 s (a third of a lease)."""


@pytest.fixture(scope="module")
def scale_pg_url() -> Iterator[str]:
    yield from _own_database("keel_tws")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def queue(request, tmp_path) -> Iterator[Any]:
    from engine.queue import RunQueue
    from keel.db import Database

    url = request.getfixturevalue("scale_pg_url") if request.param == "postgres" else f"sqlite:///{tmp_path / 'q.db'}"
    db = Database(url)
    q = RunQueue(db).setup()
    with db.transaction() as tx:  # the module's Postgres database: no runs of an earlier test
        tx.execute("DELETE FROM api_runs")
    yield q
    q.stop_listener()
    db.close()


def _queued(q: Any, n: int) -> list[tuple[str, str, str]]:
    """``n`` pending runs, each on a thread of its own: ``(tenant, thread_id, run_id)``."""
    from engine.queue import new_id

    out = []
    for _ in range(n):
        tenant = "t" + new_id().replace("-", "")[:10]
        th, _ = q.create_thread(tenant, "rita")
        run = q.create_run(tenant, th["thread_id"], assistant_id="toy", graph_id="toy", kind="input",
                           payload={"input": {}}, created_by="rita", correlation_id="cid-" + tenant)
        out.append((tenant, th["thread_id"], run["run_id"]))
    return out


def _claim_all(q: Any, n: int) -> list[tuple[str, str]]:
    """Claim ``n`` runs, each by a worker id of its own: ``(run_id, worker_id)``."""
    held = []
    for i in range(n):
        c = q.claim_next(f"w-{i}", 60.0)
        assert c.run is not None
        held.append((c.run["run_id"], f"w-{i}"))
    return held


def _expiry(q: Any, run_id: str) -> float:
    return float(q.db.fetchone("SELECT lease_expires_at FROM api_runs WHERE run_id = ?", (run_id,))["lease_expires_at"])


def _beat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "keel-heartbeats"]


def _until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_one_heartbeat_thread_keeps_many_leases_and_flags_each_run(queue):
    from engine.worker import Heartbeats

    q = queue
    runs = _queued(q, 12)
    held = _claim_all(q, 12)
    beats = Heartbeats(q, LEASE_S)
    before = threading.active_count()
    with ExitStackOf(beats, held) as leases:
        assert len(_beat_threads()) == 1, "one heartbeat thread for the process, whatever the runs held"
        assert threading.active_count() - before == 1
        assert beats.held == 12
        with q.db.transaction() as tx:  # from now on only the loop's beats keep the leases
            tx.execute("UPDATE api_runs SET lease_expires_at = ? WHERE status = 'running'", (time.time() + LEASE_S,))
        first = {rid: _expiry(q, rid) for rid, _ in held}
        time.sleep(LEASE_S * 1.5)  # longer than a lease: only the loop's beats keep them
        for rid, _ in held:
            assert _expiry(q, rid) > first[rid], "the shared loop extended every lease"
            assert q.run_status(rid) == "running"
        assert q.claim_next("thief", LEASE_S).run is None, "no lease expired while held"
        assert not any(x.lost.is_set() or x.cancelled.is_set() for x in leases)

        # one run cancelled, one taken over by another worker: each flagged on its own lease only
        tenant, tid, rid = runs[3]
        q.cancel_run(tenant, tid, rid)
        stolen = held[7][0]
        with q.db.transaction() as tx:
            tx.execute("UPDATE api_runs SET lease_owner = 'someone-else' WHERE run_id = ?", (stolen,))
        assert _until(lambda: leases[3].cancelled.is_set() and leases[7].lost.is_set())
        assert [i for i, x in enumerate(leases) if x.cancelled.is_set()] == [3]
        assert [i for i, x in enumerate(leases) if x.lost.is_set()] == [7]
    assert beats.held == 0
    assert _until(lambda: not _beat_threads()), "the loop ends once no run is held"


def test_heartbeat_many_reports_owned_runs_and_their_cancel_flags(queue):
    q = queue
    runs = _queued(q, 3)
    held = _claim_all(q, 3)
    tenant, tid, rid = runs[1]
    q.cancel_run(tenant, tid, rid)
    t0 = time.time()
    out = q.heartbeat_many([*held, (held[2][0], "not-the-owner")], 60.0)
    assert out == {held[0]: False, held[1]: True, held[2]: False}
    assert all(_expiry(q, r) >= t0 + 59 for r, _ in held)
    assert q.heartbeat_many(held[:1], None) == {held[0]: False}, "a read-only beat still reports ownership"


def test_a_step_extends_its_own_lease_only_when_the_loop_is_late(queue):
    """The worker thread's backstop: between graph steps a run extends its own lease if the
    shared loop has not extended leases for half a lease (a starved process); else it
    leaves the database alone."""
    from engine.worker import Heartbeats

    q = queue
    _queued(q, 1)
    (rid, wid), = _claim_all(q, 1)
    beats = Heartbeats(q, 30.0)
    with beats.hold(rid, wid) as lease:
        with q.db.transaction() as tx:
            tx.execute("UPDATE api_runs SET lease_expires_at = ? WHERE run_id = ?", (time.time() + 5, rid))
        before = _expiry(q, rid)
        lease.keep_alive()  # the loop extended just now: nothing to do
        assert _expiry(q, rid) == before
        beats._extended -= 20  # the loop is 20 s late
        lease.keep_alive()
        assert _expiry(q, rid) > before + 20


class ExitStackOf:
    """Hold every ``(run_id, worker_id)`` on ``beats`` for the ``with`` block; yields the leases."""

    def __init__(self, beats: Any, held: list[tuple[str, str]]) -> None:
        from contextlib import ExitStack

        self.beats, self.held, self.stack = beats, held, ExitStack()

    def __enter__(self) -> list[Any]:
        return [self.stack.enter_context(self.beats.hold(r, w)) for r, w in self.held]

    def __exit__(self, *exc: Any) -> None:
        self.stack.close()


def _idle_waiters(q: Any, n: int) -> tuple[list[threading.Thread], list[float]]:
    """``n`` threads waiting like idle workers (``wait_change`` for up to 3 s); each records
    how long it waited."""
    waited: list[float] = []
    ready = threading.Barrier(n + 1)

    def idle() -> None:
        seen = q.version()
        ready.wait()
        t = time.monotonic()
        q.wait_change(seen, 3.0)
        waited.append(time.monotonic() - t)

    threads = [threading.Thread(target=idle, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.2)  # all of them inside wait_change
    return threads, waited


def test_a_queued_run_wakes_one_idle_worker_not_all(queue):
    q = queue
    threads, waited = _idle_waiters(q, 6)
    _queued(q, 1)  # create_run notifies
    time.sleep(0.5)
    assert len(waited) == 1, f"{len(waited)} idle threads woke for one queued run"
    _queued(q, 2)
    time.sleep(0.5)
    assert len(waited) == 3, "one more waiter per queued run"
    for t in threads:
        t.join(timeout=5)
    assert sorted(waited)[:3][-1] < 1.0 and sorted(waited)[3] > 2.5


def test_a_finished_run_wakes_its_waiters_but_no_idle_worker(queue):
    import asyncio

    q = queue
    _queued(q, 1)
    (rid, wid), = _claim_all(q, 1)
    run = q.get_run_any(rid)
    threads, waited = _idle_waiters(q, 4)

    async def wait_done() -> bool:
        with q.done_event(rid) as ev:
            await asyncio.to_thread(q.finish, run, wid, "success", "idle")
            await asyncio.wait_for(ev.wait(), 2.0)
            return True

    assert asyncio.run(wait_done()), "the run's own waiter is woken"
    time.sleep(0.5)
    assert waited == [], "a run that freed no queued run wakes no idle worker thread"
    for t in threads:
        t.join(timeout=5)


@pytest.mark.postgres
def test_queue_lane_claims_while_the_main_pool_is_exhausted(scale_pg_url):
    """A worker's queue runs on a small pool of its own (``Database.lane``): with every
    connection of the main pool taken (checkpoint writes of many runs), a claim and a
    heartbeat still go through at once instead of waiting out the pool timeout."""
    from contextlib import ExitStack

    from engine.queue import RunQueue
    from keel.db import Database

    db = Database(scale_pg_url, pool_timeout_s=1.0, pool_size=4)
    try:
        lane = db.lane("queue", 2)
        assert lane is db.lane("queue", 2) and lane.pool is not db.pool
        assert lane.pool.max_size == 2 and db.pool.max_size == 4
        q = RunQueue(lane).setup()
        with db.transaction() as tx:
            tx.execute("DELETE FROM api_runs")
        _queued(q, 1)
        with ExitStack() as busy:
            for _ in range(4):
                busy.enter_context(db.pool.connection())
            t = time.monotonic()
            c = q.claim_next("w-lane", 30.0)
            assert c.run is not None
            assert q.heartbeat_many([(c.run["run_id"], "w-lane")], 30.0) == {(c.run["run_id"], "w-lane"): False}
            assert time.monotonic() - t < 0.9, "the queue waited for the main pool"
    finally:
        db.close()
    assert lane.pool.closed, "a lane closes with its database"


def test_queue_lane_is_the_database_itself_on_sqlite(tmp_path):
    from keel.db import Database

    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    assert db.lane("queue", 2) is db
    db.close()


def test_run_threads_bound_langgraphs_executor_per_run(tmp_path):
    """``KEEL_WORKER_RUN_THREADS`` becomes the run config's ``max_concurrency`` (LangGraph's
    per-run executor); unset, LangGraph's default stands."""
    from types import SimpleNamespace

    from engine.worker import Worker
    from keel.config import Settings

    run = {"payload": {"config": {}}, "thread_id": "th", "requester": None, "created_by": "rita",
           "correlation_id": "c", "run_id": "r", "tenant": "t", "graph_id": "support"}
    bounded = Worker(SimpleNamespace(settings=Settings(data_dir=tmp_path, worker_run_threads=1)), SimpleNamespace())
    assert bounded._config(run)["max_concurrency"] == 1
    default = Worker(SimpleNamespace(settings=Settings(data_dir=tmp_path)), SimpleNamespace())
    assert "max_concurrency" not in default._config(run)


def test_idle_worker_threads_share_one_poll_of_the_queue(queue, tmp_path):
    """Twenty idle threads of one process poll the queue about once per ``poll_s`` between
    them (one poller at a time), not each on its own."""
    from types import SimpleNamespace

    from engine.worker import run_workers
    from keel.config import Settings

    calls: list[float] = []
    real = queue.claim_next

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(time.monotonic())
        return real(*a, **kw)

    queue.claim_next = counting  # type: ignore[method-assign]
    rt = SimpleNamespace(settings=Settings(data_dir=tmp_path, review_sweep_s=3600),
                         crons=SimpleNamespace(fire_due=lambda q: None))
    stop = threading.Event()
    threads = run_workers(rt, queue, concurrency=20, stop=stop, poll_s=0.2, lease_s=30.0)
    time.sleep(0.5)  # started, first claims done
    n0 = len(calls)
    time.sleep(2.0)
    polls = len(calls) - n0
    stop.set()
    queue.wake_all()
    for t in threads:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in threads), "every thread stopped"
    assert 3 <= polls <= 2.0 / 0.2 + 4, f"{polls} claims in 2 s by 20 idle threads polling every 0.2 s"
