"""What a run costs the worker (keel issue #13): fewer transactions and reads per run, same results.

- ended spans and run recordings are written in batches (one transaction for a run's rows,
  not one each), and a reader that flushes does not wait for the batch to fill;
- the end of a run reads the thread's final state once (outcome, hooks, outcome label);
- a tool's card (with its input JSON schema) is built once per declaration.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest


# -- spans -----------------------------------------------------------------------------------
class _FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def write(self, spans: list[Any]) -> None:
        self.batches.append(list(spans))


def test_spans_ending_close_together_share_one_write() -> None:
    from keel.telemetry import _Writer

    w = _Writer(linger_s=1.0).start()
    store = _FakeStore()
    for i in range(5):  # a run's spans end a few milliseconds apart
        w.put(store, f"span-{i}")  # type: ignore[arg-type]
        time.sleep(0.01)
    assert w.drain(5.0)
    assert store.batches == [[f"span-{i}" for i in range(5)]]


def test_a_flush_does_not_wait_for_the_linger() -> None:
    from keel.telemetry import _Writer

    w = _Writer(linger_s=30.0).start()
    store = _FakeStore()
    w.put(store, "only")  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert w.drain(10.0)
    assert time.monotonic() - t0 < 5.0
    assert store.batches == [["only"]]
    w.put(store, "next")  # type: ignore[arg-type]
    assert w.drain(10.0) and store.batches[-1] == ["next"]


def test_stored_spans_are_redacted(tmp_path: Path) -> None:
    """Rows are redacted without copying the span first: attributes, event attributes, status."""
    from opentelemetry.trace import Status, StatusCode

    from guards.dlp import redact
    from keel import telemetry
    from keel.db import Database

    telemetry.install(redact)
    db = Database(f"sqlite:///{tmp_path / 'spans.db'}")
    store = telemetry.SpanStore(db).setup()
    with telemetry.use_sink(store):
        span = telemetry.tracer().start_span("leaky")
        span.set_attribute("keel.thread_id", "th-redact")
        span.set_attribute("who", "mail me at jane@example.com")
        span.set_attribute("many", ["call +1 415 555 0100", "plain"])
        span.add_event("note", {"card": "4111 1111 1111 1111"})
        span.set_status(Status(StatusCode.ERROR, "token sk-abcdef0123456789abcdef leaked"))
        span.end()
    telemetry.flush_store(5.0)
    (row,) = store.thread_spans(None, "th-redact")
    assert row["attributes"]["who"] == "mail me at [email]"
    assert row["attributes"]["many"] == ["call [phone]", "plain"]
    assert row["events"][0]["attributes"] == {"card": "[card]"}
    assert row["status_message"] == "token [secret] leaked"
    db.close()


# -- recordings --------------------------------------------------------------------------------
class _Batches:
    """A RunRecordings whose writes are only counted."""

    def __new__(cls, linger_s: float) -> Any:
        from engine.recordings import RunRecordings

        class Counting(RunRecordings):
            def add(self, *rows: Any, tx: Any = None) -> None:
                self.batches.append(list(rows))

        store = Counting(None)  # type: ignore[arg-type]
        store.linger_s = linger_s
        store.batches = []  # type: ignore[attr-defined]
        return store


def _rec(seq: int) -> Any:
    from engine.recordings import Recording

    return Recording(tenant="t", thread_id="th", run_id="r", part="p", seq=seq, kind="tool", name="x",
                     input_digest="d", input=None, output={}, meta={}, at="2026-01-01T00:00:00Z")


def test_a_runs_recordings_share_one_write() -> None:
    store = _Batches(linger_s=1.0)
    for i in range(4):
        store.submit(_rec(i))
        time.sleep(0.01)
    assert store.flush(5.0)
    assert [[r.seq for r in b] for b in store.batches] == [[0, 1, 2, 3]]
    store.close()


def test_a_recordings_flush_does_not_wait_for_the_linger() -> None:
    store = _Batches(linger_s=30.0)
    store.submit(_rec(0))
    time.sleep(0.05)  # the writer is lingering now
    t0 = time.monotonic()
    assert store.flush(10.0)
    assert time.monotonic() - t0 < 5.0 and len(store.batches) == 1
    done = threading.Event()
    threading.Thread(target=lambda: (store.close(), done.set()), daemon=True).start()
    assert done.wait(10.0)


# -- the end of a run ----------------------------------------------------------------------------
def test_a_run_reads_its_final_state_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from langgraph.pregel import Pregel

    from bench.common import AUTO_TICKETS, keel_runtime, load_tenant
    from engine.queue import RunQueue
    from engine.worker import Worker

    rt = keel_runtime(None, tmp_path)  # type: ignore[arg-type]  # SQLite
    try:
        q = RunQueue(rt.db).setup()
        tickets = load_tenant(rt, "cpu1")
        th, _ = q.create_thread("cpu1", "req", graph_id="support")
        run = q.create_run("cpu1", th["thread_id"], assistant_id="support", graph_id="support", kind="wait",
                           payload={"input": {"ticket": tickets[AUTO_TICKETS[0]]}}, created_by="req",
                           correlation_id="cid-cpu1", set_requester=True)
        reads: list[str] = []
        real = Pregel.get_state

        def counted(self: Any, config: Any, *a: Any, **k: Any) -> Any:
            reads.append(config["configurable"]["thread_id"])
            return real(self, config, *a, **k)

        monkeypatch.setattr(Pregel, "get_state", counted)
        assert Worker(rt, q, worker_id="cpu").run_one()
        done = q.get_run("cpu1", th["thread_id"], run["run_id"])
        assert done["status"] == "success"
        assert reads == [th["thread_id"]]  # outcome, webhooks and the outcome label from one read
    finally:
        rt.close()


def test_after_run_uses_the_values_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import review

    emitted: list[tuple[str, dict[str, Any]]] = []

    class Hooks:
        def emit(self, tenant: str, event: str, key: str, body: dict[str, Any]) -> None:
            emitted.append((event, body))

    class Desk:
        webhooks = Hooks()
        feedback = None

    monkeypatch.setattr(review, "review_desk", lambda rt: Desk())
    monkeypatch.setattr(review, "state_reader", lambda rt: pytest.fail("read the state again"))
    run = {"tenant": "t", "thread_id": "th", "run_id": "r", "graph_id": "support", "kind": "input"}
    review._after_run(object(), run, "idle", [], {"status": "escalated", "reason_codes": ["x"],  # type: ignore[arg-type]
                                                  "ticket": {"id": "T-1"}})
    assert emitted == [("run.escalated", {"thread_id": "th", "run_id": "r", "graph_id": "support",
                                          "reason_codes": ["x"], "ticket_id": "T-1"})]


# -- tool cards ----------------------------------------------------------------------------------
def test_a_tools_card_is_built_once() -> None:
    from tools.registry import TOOLS, cards

    decl = next(iter(TOOLS.values()))
    assert decl.card is decl.card
    assert cards([decl.name])[decl.name] is decl.card
    assert decl.card.input_schema == decl.input_model.model_json_schema()


def test_run_outcome_takes_the_values_it_is_given() -> None:
    from engine.tracing import run_outcome

    class NoReads:
        def get_state(self, config: Any) -> Any:
            raise AssertionError("read the state again")

    run = {"thread_id": "th"}
    assert run_outcome(NoReads(), run, "idle", values={"status": "escalated"}) == "escalated"
    assert run_outcome(NoReads(), run, "interrupted", values={}) == "interrupted"


# -- DLP -----------------------------------------------------------------------------------------
def test_short_texts_are_redacted_once_and_remembered() -> None:
    from guards import dlp

    text = "write to cpu-memo@example.com or +44 20 7946 0958"
    first = dlp.redact_text(text)
    hits = dlp._redact_short.cache_info().hits
    assert dlp.redact_text(text) == first == "write to [email] or [phone]"
    assert dlp._redact_short.cache_info().hits == hits + 1
    long = "card 4111 1111 1111 1111 " + "x" * 300  # past the memo's length: scanned every time
    assert dlp.redact_text(long) == "card [card] " + "x" * 300
    assert dlp._redact_short.cache_info().hits == hits + 1


def test_closing_a_runtime_writes_the_spans_still_in_the_batch(tmp_path: Path) -> None:
    """A span that ended just before the runtime closed is written, not dropped with its pool."""
    from engine.runtime import Runtime
    from engine.tracing import install_tracing
    from keel import telemetry
    from keel.config import Settings
    from keel.db import Database

    rt = Runtime(Settings(data_dir=tmp_path / "d", plan_signing_key="close-key"))
    store = install_tracing(rt)
    writer = telemetry._writer()
    linger, writer.linger_s = writer.linger_s, 30.0
    try:
        with telemetry.use_sink(store):
            span = telemetry.tracer().start_span("last words")
            span.set_attribute("keel.thread_id", "th-close")
            span.end()
        url = rt.db.url
        rt.close()
    finally:
        writer.linger_s = linger
    db = Database(url)
    try:
        assert [r["name"] for r in telemetry.SpanStore(db).thread_spans(None, "th-close")] == ["last words"]
    finally:
        db.close()


# -- tool cache ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["customer", "tenant"])
def test_a_cache_lookup_is_one_read_and_keeps_its_generations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               scope: str) -> None:
    """Generations and entry in one statement (on Postgres one round trip, where a transaction
    of two reads took four); a write committed after the lookup makes the entry stale, as before."""
    from dataclasses import dataclass

    from pydantic import BaseModel

    from keel.db import Database, _SqliteTx
    from tools.cache import ToolCache, bump, customer_tag

    class Out(BaseModel):
        n: int

    @dataclass(frozen=True)
    class Decl:
        name: str = "get_thing"
        side_effect: bool = False
        output_model: type[BaseModel] = Out
        cache_ttl_s: float | None = 60.0
        cache_scope: str = scope

    db = Database(f"sqlite:///{tmp_path / 'cache.db'}")
    cache = ToolCache(db)
    cache.setup()
    statements: list[str] = []
    for name in ("fetchone", "fetchall", "execute"):
        real = getattr(_SqliteTx, name)
        monkeypatch.setattr(_SqliteTx, name, lambda self, sql, params=(), _real=real:
                            (statements.append(sql), _real(self, sql, params))[1])
    first = cache.lookup(Decl(), "t1", "C-1", "args")
    assert len(statements) == 1  # generations and entry: one statement
    assert first is not None and first.output is None and first.stamp == ("0.0" if scope == "customer" else "0")
    cache.store(first, {"n": 1})
    hit = cache.lookup(Decl(), "t1", "C-1", "args")
    assert hit is not None and hit.output == {"n": 1}
    with db.transaction() as tx:  # a side effect on the customer (or a fixtures load) commits
        bump(tx, "t1", customer_tag("C-1") if scope == "customer" else "*")
    stale = cache.lookup(Decl(), "t1", "C-1", "args")
    assert stale is not None and stale.output is None and stale.stamp != first.stamp
    db.close()


# -- the lease fence -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_pg_url() -> Any:
    from conftest import _own_database

    yield from _own_database("keel_tcpu")


@pytest.mark.postgres
def test_the_fence_holds_its_lock_until_the_writes_commit(cpu_pg_url: str, tmp_path: Path) -> None:
    """The fence check and the writes after it are one transaction in one pipeline: the run
    row stays locked, and the writes invisible, until the pipeline's Sync commits them all."""
    import psycopg

    from bench.common import keel_runtime
    from engine.queue import RunQueue

    rt = keel_runtime(cpu_pg_url, tmp_path)
    try:
        q = RunQueue(rt.db).setup()
        th, _ = q.create_thread("fence", "req")
        run = q.create_run("fence", th["thread_id"], assistant_id="support", graph_id="support", kind="input",
                           payload={"input": {}}, created_by="req", correlation_id="cid-fence")
        rt.db.execute("UPDATE api_runs SET status = 'running', lease_owner = 'w-1', lease_expires_at = ?"
                      " WHERE run_id = ?", (time.time() + 600, run["run_id"]))
        rt.db.execute("CREATE TABLE IF NOT EXISTS cpu_fence_probe (v INTEGER)")
        saver = rt.checkpointer
        locks = ("SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'api_runs'"
                 " AND l.mode = 'RowShareLock' AND l.granted AND l.pid <> pg_backend_pid()")
        with psycopg.connect(cpu_pg_url, autocommit=True) as other:
            saver._fence.key = (run["run_id"], "w-1")
            try:
                with saver._cursor(pipeline=True) as cur:
                    cur.execute("INSERT INTO cpu_fence_probe (v) VALUES (7)")
                    deadline = time.monotonic() + 5
                    while other.execute(locks).fetchone()[0] == 0 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    time.sleep(0.1)  # the insert has reached the server too: still one open transaction
                    held = other.execute(locks).fetchone()[0]
                    visible = other.execute("SELECT COUNT(*) FROM cpu_fence_probe").fetchone()[0]
            finally:
                saver._fence.key = None
            assert (held, visible) == (1, 0)
            assert other.execute(locks).fetchone()[0] == 0
            assert other.execute("SELECT COUNT(*) FROM cpu_fence_probe").fetchone()[0] == 1
    finally:
        rt.close()


def test_a_transaction_begins_without_tenacity_and_retries_only_a_lost_connection(monkeypatch):
    """The first attempt runs outside tenacity's loop; a failure on a lost connection is tried
    twice more (three attempts in all, as ``_BEGIN_RETRY`` says), any other failure at once."""
    import psycopg
    import tenacity

    from keel import db as dbmod

    monkeypatch.setattr(dbmod.time, "sleep", lambda s: None)
    built: list[int] = []
    real = tenacity.Retrying.__init__

    def counting(self, *a, **kw):
        built.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(tenacity.Retrying, "__init__", counting)
    assert dbmod._begin_retrying(lambda x: x + 1, 41) == 42 and built == []  # the healthy path

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return "ok"

    assert dbmod._begin_retrying(flaky) == "ok" and len(calls) == 3 and built == [1]
    calls.clear()

    def gone() -> str:
        calls.append(1)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    with pytest.raises(psycopg.OperationalError):
        dbmod._begin_retrying(gone)
    assert len(calls) == 3

    def wrong() -> str:
        calls.append(1)
        raise ValueError("not a connection problem")

    calls.clear()
    with pytest.raises(ValueError):
        dbmod._begin_retrying(wrong)
    assert len(calls) == 1
