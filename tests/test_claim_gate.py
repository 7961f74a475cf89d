"""The claim gate (engine/claim_gate.py): a worker process stops claiming while its scheduling
lag says the runs it holds are already waiting for CPU, and never below its floor."""

from __future__ import annotations

import threading
import time

import pytest

from engine.claim_gate import ClaimGate


def test_below_the_floor_a_claim_is_always_admitted():
    gate = ClaimGate(max_lag_ms=10, floor=4)
    for _ in range(50):
        gate.observe(0.5)  # half a second late: the process is drowning
    assert gate.lag_ms > 10
    assert [gate.state(held).open for held in range(6)] == [True, True, True, True, False, False]
    assert gate.closed_total == 2


def test_the_limit_grows_while_the_process_keeps_up_and_shrinks_while_it_lags():
    gate = ClaimGate(max_lag_ms=10, floor=8)
    assert gate.limit == 8 and gate.state(7).open and not gate.state(8).open  # a burst stops at the floor
    assert gate.adjust() == 10  # low lag, using its limit: a quarter of the floor more
    assert gate.state(9).open and not gate.state(10).open
    gate.state(2)
    assert gate.adjust() == 10  # low lag but far below the limit: no growth on idle capacity
    for _ in range(30):
        gate.observe(0.2)
    assert gate.adjust() == 8  # 10 x 0.75 = 7, held up at the floor
    assert gate.limit == 8  # never below the floor
    assert not gate.state(8).open and gate.state(7).open


def test_the_lag_is_smoothed_and_the_gate_reopens_when_it_falls():
    gate = ClaimGate(max_lag_ms=10, floor=1, smoothing=0.5)
    gate.limit = 100
    gate.observe(0.040)  # one late wake-up is not overload
    assert gate.lag_ms == pytest.approx(20.0) and not gate.state(5).open
    for _ in range(5):
        gate.observe(0.0)
    assert gate.lag_ms < 1.0 and gate.state(5).open


def test_a_bad_threshold_is_refused():
    with pytest.raises(ValueError, match="max_lag_ms"):
        ClaimGate(max_lag_ms=0, floor=1)


def test_the_sampler_sees_threads_competing_for_the_gil():
    """Four pure-Python busy threads: the sampler waits for the GIL behind them at every tick."""
    gate = ClaimGate(max_lag_ms=5, floor=1, tick_s=0.01).start()
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    busy = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    for t in busy:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while gate.lag_ms <= 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gate.lag_ms > 5, gate.lag_ms
        assert not gate.state(3).open
    finally:
        stop.set()
        for t in busy:
            t.join()


@pytest.fixture
def workers(tmp_path):
    """``start(**kw)``: worker threads on a fresh SQLite queue with a stand-in runtime (no graph:
    these tests look at claiming, not running); stopped and joined afterwards."""
    from types import SimpleNamespace

    from engine.queue import RunQueue
    from engine.worker import run_workers
    from keel.config import Settings
    from keel.db import Database

    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    queue = RunQueue(db).setup()
    rt = SimpleNamespace(settings=Settings(data_dir=tmp_path, review_sweep_s=3600),
                         crons=SimpleNamespace(fire_due=lambda q: None))
    stop = threading.Event()
    started: list[threading.Thread] = []

    def start(**kw):
        started.extend(run_workers(rt, queue, stop=stop, poll_s=0.05, lease_s=30.0, **kw))
        return queue

    def join() -> None:
        stop.set()
        queue.wake_all()
        for t in started:
            t.join(timeout=15)

    yield SimpleNamespace(start=start, join=join, queue=queue)
    join()
    db.close()


class _Gate:
    """A gate the test opens and closes (the worker asks it before every claim)."""

    tick_s = 0.02

    def __init__(self) -> None:
        self.open = False
        self.asked: list[int] = []

    def state(self, held: int):
        from engine.claim_gate import GateState

        self.asked.append(held)
        return GateState(lag_ms=0.0 if self.open else 999.0, held=held, limit=1, open=self.open)


def test_a_worker_does_not_claim_while_its_gate_is_closed(workers):
    from types import SimpleNamespace

    claims: list[float] = []

    def claim_next(*a, **kw):
        claims.append(time.monotonic())
        return SimpleNamespace(run=None, dead_lettered=[])

    gate = _Gate()
    workers.queue.claim_next = claim_next  # type: ignore[method-assign]
    workers.start(concurrency=3, gate=gate)
    time.sleep(0.6)
    assert gate.asked and claims == [], "closed: asked, never claimed"
    gate.open = True
    deadline = time.monotonic() + 5
    while not claims and time.monotonic() < deadline:
        time.sleep(0.02)
    assert claims, "open again: the worker claims"


def test_the_gate_is_on_by_default_and_its_settings_are_checked(tmp_path):
    from keel.config import Settings

    assert Settings(data_dir=tmp_path).worker_claim_gate_lag_ms == 20.0
    assert Settings(data_dir=tmp_path, worker_claim_gate_lag_ms=0).worker_claim_gate_lag_ms == 0
    with pytest.raises(ValueError):
        Settings(data_dir=tmp_path, worker_claim_gate_floor=0)


def test_runs_slower_than_the_target_shrink_the_limit_whatever_the_lag():
    gate = ClaimGate(max_lag_ms=10, floor=4, target_run_s=18.0)
    gate.limit = 40
    gate.state(40)
    gate.run_ended(12.0)
    assert gate.adjust() == 41  # fast runs, low lag, limit in use: it grows
    for _ in range(30):
        gate.run_ended(29.0)  # runs now near the 30 s cap
    assert gate.run_s > 18.0 and gate.lag_ms == 0.0
    assert gate.adjust() == 30 and gate.adjust() == 22


def test_the_sampler_stops_with_the_workers(workers):
    """An app started and stopped many times (tests, embedded serve) leaves no sampler behind."""

    def samplers() -> int:
        return sum(1 for t in threading.enumerate() if t.name == "keel-claim-gate")

    before = samplers()
    workers.start(concurrency=2)
    assert samplers() == before + 1
    workers.join()
    deadline = time.monotonic() + 5
    while samplers() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert samplers() == before
