"""Recordings of live support runs: every answer from outside the graph, in order.

A replay (:mod:`engine.replay_trace`) re-runs a stored run under a candidate configuration
without calling a model or touching a business system, so everything a run learned from
outside its own code must be kept: the model gateway's answers, the tool runner's results,
the store reads the policy judges a plan on (the back office's records, keel's refund
history) and the run clock. The checkpoint holds some of it (triage, extraction, plan,
the records read), but not the reads VERIFY makes, the refund history the velocity rule
saw, nor the model, provider and fallbacks behind an answer; and the tool ledger holds
side effects only. So the engine wraps those parts of each run's
:class:`~graphs.context.SupportContext` (:func:`recording_context`, installed by
``engine.runtime.Runtime.support_context``) and writes one ``run_recordings`` row per
answer, on SQLite and Postgres alike.

What a row holds is what the node received, which the graph checkpoints anyway (DLP: no
more than the checkpoint keeps); model inputs are kept as a digest only (the ticket is in
the checkpoint). A customer's or thread's rows are erased with
:func:`erase_thread_recordings` (``keel forget``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import Any

from langgraph.config import get_config

from gateway.base import PlanningInput
from gateway.gateway import CallHook
from gateway.prompts import system_prompt
from graphs.context import BackOfficeReads, ModelCalls, RefundLedger, SupportContext, ToolCalls
from keel.db import Database, Tx
from keel.types import Extraction, PlanProposal, Route, Ticket, TriageResult
from tools.runner import ToolContext, ToolResult

__all__ = [
    "Recording",
    "RunRecordings",
    "RecordingGateway",
    "RecordingTools",
    "RecordingReads",
    "RecordingRefunds",
    "Recorder",
    "recording_context",
    "erase_thread_recordings",
    "erase_customer_recordings",
    "digest",
    "model_input_digest",
    "tool_input_digest",
    "read_input_digest",
    "prompts_digest",
    "KINDS",
]

log = logging.getLogger("keel.recordings")

KINDS = ("model", "tool", "read", "refunds", "clock")
"""What a row records: a model answer, a tool result, a back-office read, the refund
history of a customer, the run clock."""

_DDL = """
CREATE TABLE IF NOT EXISTS run_recordings (
  tenant TEXT NOT NULL,
  customer_id TEXT NOT NULL,
  thread_id TEXT NOT NULL,
  run_id TEXT NOT NULL,
  part TEXT NOT NULL,
  seq INTEGER NOT NULL,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  input_digest TEXT NOT NULL,
  input_json TEXT,
  output_json TEXT NOT NULL,
  meta_json TEXT,
  at TEXT NOT NULL,
  PRIMARY KEY (thread_id, run_id, part, seq)
);
CREATE INDEX IF NOT EXISTS run_recordings_at ON run_recordings (tenant, at);
CREATE INDEX IF NOT EXISTS run_recordings_customer ON run_recordings (tenant, customer_id)
"""


def digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON (what a replay looks an answer up by)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def model_input_digest(task: str, *parts: Any) -> str:
    """The digest a model answer is recorded and looked up under (task and its input)."""
    return digest([task, *(_jsonable(p) for p in parts)])


def tool_input_digest(name: str, args: Mapping[str, Any]) -> str:
    """The digest of a tool call (tool name, arguments as given)."""
    return digest([name, _jsonable(dict(args))])


def read_input_digest(method: str, args: Sequence[Any]) -> str:
    """The digest of a store read (method, positional arguments)."""
    return digest([method, _jsonable(list(args))])


def prompts_digest(task: str) -> str:
    """sha256 of the system prompt a model answered ``task`` under."""
    return hashlib.sha256(system_prompt(task).encode()).hexdigest()  # type: ignore[arg-type]


# ------------------------------------------------------------------ the store
@dataclass(frozen=True, slots=True)
class Recording:
    """One recorded answer."""

    tenant: str
    thread_id: str
    run_id: str
    part: str
    seq: int
    kind: str
    name: str
    input_digest: str
    input: Any
    output: Any
    meta: dict[str, Any]
    at: str
    customer_id: str = ""
    """The run's customer (``""`` before the run named one)."""


_STORES: weakref.WeakSet[RunRecordings] = weakref.WeakSet()
"""Every store of this process (an erasure flushes the queued rows of its database first)."""


class RunRecordings:
    """The ``run_recordings`` table: write rows, read a thread's, erase a thread's.

    A run's rows are written by a background thread, many to a transaction
    (:meth:`submit`), so recording adds no write latency to the run (one commit per row cost
    a run ~50 ms on SQLite). Reads flush first; :meth:`close` flushes and stops the writer.
    Rows still queued when a process dies are lost: a replay of that run then says where
    it has no recorded answer. The writer lingers ``linger_s`` after a row arrives so that
    the rest of the run's rows share its transaction (a run's half-dozen rows cost about one
    commit, not one each); a read or :meth:`flush` cuts the wait short."""

    linger_s: float = 0.25
    """How long the writer waits for more rows after the first of a batch."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cond = threading.Condition()
        self._queue: list[Recording] = []
        self._busy = False
        self._urgent = 0
        """Callers waiting in :meth:`flush`: the writer writes at once."""
        self._writer: threading.Thread | None = None
        self._closed = False
        _STORES.add(self)

    def setup(self) -> None:
        """Create the table (idempotent)."""
        self.db.executescript(_DDL)

    def add(self, *rows: Recording, tx: Tx | None = None) -> None:
        """Write rows now, in one transaction (``tx``'s if given)."""
        with self.db.within(tx) as t:
            for row in rows:
                t.execute(
                    "INSERT INTO run_recordings (tenant, customer_id, thread_id, run_id, part, seq, kind, name,"
                    " input_digest, input_json, output_json, meta_json, at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.tenant, row.customer_id, row.thread_id, row.run_id, row.part, row.seq, row.kind, row.name, row.input_digest,
                     None if row.input is None else json.dumps(row.input, default=str),
                     json.dumps(row.output, default=str), json.dumps(row.meta, default=str), row.at),
                )

    def submit(self, row: Recording) -> None:
        """Queue a row for the background writer (written within milliseconds)."""
        with self._cond:
            if self._closed:  # a run still going after the runtime closed: written in place
                pending = True
            else:
                pending = False
                self._queue.append(row)
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(target=self._drain, name="keel-recordings", daemon=True)
                    self._writer.start()
                if len(self._queue) == 1:  # the writer sleeps only on an empty queue; else it lingers anyway
                    self._cond.notify_all()
        if pending:
            self.add(row)

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                deadline = time.monotonic() + self.linger_s
                while not (self._urgent or self._closed):  # the rest of the run's rows, one commit
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._queue, self._busy = self._queue, [], True
            try:
                self.add(*batch)
            except Exception as e:  # noqa: BLE001 - a recording never fails a run; the replay reports the gap
                log.warning("%d recorded answers dropped (%s)", len(batch), type(e).__name__)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued row is written; False on timeout."""
        with self._cond:
            self._urgent += 1
            self._cond.notify_all()  # a lingering writer writes now
            try:
                return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout=timeout)
            finally:
                self._urgent -= 1

    def close(self) -> None:
        """Write what is queued and stop the writer (later rows are written in place)."""
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join(timeout=5.0)

    def thread(self, thread_id: str, *, run_id: str | None = None, tenant: str | None = None) -> list[Recording]:
        """A thread's rows (one run's, with ``run_id``), in the order they were written."""
        self.flush()
        sql, params = "SELECT * FROM run_recordings WHERE thread_id = ?", [thread_id]
        if run_id is not None:
            sql, params = sql + " AND run_id = ?", [*params, run_id]
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [*params, tenant]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql + " ORDER BY at, part, seq", params)
        return [_row(r) for r in rows]

    def threads_since(self, since: datetime, *, tenant: str | None = None, limit: int = 100) -> list[tuple[str, str]]:
        """``(tenant, thread_id)`` of the threads recorded from ``since`` on, oldest first."""
        self.flush()
        sql = "SELECT tenant, thread_id, MIN(at) AS first_at FROM run_recordings WHERE at >= ?"
        params: list[Any] = [since.astimezone(UTC).isoformat()]
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [*params, tenant]
        sql += " GROUP BY tenant, thread_id ORDER BY first_at, thread_id LIMIT ?"
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, [*params, int(limit)])
        return [(r["tenant"], r["thread_id"]) for r in rows]

    def erase_thread(self, thread_id: str, *, tx: Tx | None = None) -> int:
        """Delete a thread's rows; how many were deleted."""
        self.flush()
        with self.db.within(tx) as t:
            return t.execute("DELETE FROM run_recordings WHERE thread_id = ?", (thread_id,))


def _row(r: Mapping[str, Any]) -> Recording:
    return Recording(
        tenant=r["tenant"], customer_id=r["customer_id"], thread_id=r["thread_id"], run_id=r["run_id"], part=r["part"], seq=int(r["seq"]),
        kind=r["kind"], name=r["name"], input_digest=r["input_digest"],
        input=None if r["input_json"] is None else json.loads(r["input_json"]),
        output=json.loads(r["output_json"]), meta=json.loads(r["meta_json"] or "{}"), at=str(r["at"]),
    )


def erase_thread_recordings(db: Database, thread_id: str, *, tx: Tx | None = None) -> int:
    """Erase every recording of ``thread_id`` (a customer's erasure, ``keel forget``): the
    number of rows deleted. Safe on a database where no run was ever recorded."""
    for live in list(_STORES):  # rows a run of this process still has queued go first
        if live.db is db:
            live.flush()
    store = RunRecordings(db)
    store.setup()
    return store.erase_thread(thread_id, tx=tx)


def erase_customer_recordings(db: Database, tenant: str, customer_id: str, *, tx: Tx | None = None) -> int:
    """Erase every recording of every thread that served ``customer_id`` of ``tenant``:
    the number of rows deleted."""
    for live in list(_STORES):
        if live.db is db:
            live.flush()
    RunRecordings(db).setup()
    with db.within(tx) as t:
        return t.execute(
            "DELETE FROM run_recordings WHERE tenant = ? AND thread_id IN"
            " (SELECT thread_id FROM run_recordings WHERE tenant = ? AND customer_id = ?)",
            (tenant, tenant, customer_id))


# ------------------------------------------------------------------ the recorder
def _run_ids() -> tuple[str, str] | None:
    """``(thread_id, run_id)`` of the graph run this call belongs to (None: not in a run)."""
    try:
        cfg = get_config()
    except Exception:  # noqa: BLE001 - called outside a graph run (a direct node test): nothing to record
        return None
    conf = cfg.get("configurable") or {}
    thread = conf.get("thread_id")
    if not thread:
        return None
    meta = cfg.get("metadata") or {}
    run_id = meta.get("run_id") or conf.get("run_id") or ""
    return str(thread), str(run_id)


class Recorder:
    """Records one run context's answers (one per :func:`recording_context`): a sequence
    number per row, the thread and run from the graph run's config. Rows go to the store's
    background writer; a failed write is logged and dropped (a recording never fails a run)."""

    def __init__(self, store: RunRecordings) -> None:
        self.store = store
        self.part = uuid.uuid4().hex[:16]
        self._seq = 0
        self._lock = threading.Lock()
        self._clock_seen = False
        self._pending_clock: str | None = None
        self._tenant = ""
        self._customer = ""

    def record(self, tenant: str, kind: str, name: str, input_digest: str, output: Any, *,
               input: Any = None, meta: dict[str, Any] | None = None, customer: str = "") -> None:
        ids = _run_ids()
        if ids is None:
            return
        if tenant and self._pending_clock is not None and kind != "clock":
            pending, self._pending_clock = self._pending_clock, None
            self.record(tenant, "clock", "clock", digest("clock"), pending, customer=customer)
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._tenant = tenant or self._tenant
            self._customer = customer = customer or self._customer
        row = Recording(tenant=tenant, customer_id=customer, thread_id=ids[0], run_id=ids[1] or self.part, part=self.part, seq=seq,
                        kind=kind, name=name, input_digest=input_digest, input=_jsonable(input),
                        output=_jsonable(output), meta=meta or {}, at=datetime.now(UTC).isoformat())
        self.store.submit(row)

    def clock(self, inner: Callable[[], datetime]) -> Callable[[], datetime]:
        """The run clock, its first reading in a run recorded (a replay runs on it)."""

        def now() -> datetime:
            value = inner()
            if not self._clock_seen and _run_ids() is not None:
                self._clock_seen = True
                if self._tenant:
                    self.record(self._tenant, "clock", "clock", digest("clock"), value.isoformat())
                else:  # written with the run's first answer, once its tenant is known
                    self._pending_clock = value.isoformat()
            return value

        return now


class RecordingGateway:
    """:class:`~graphs.context.ModelCalls` that records each validated answer (or failure),
    with the model, provider, fallbacks and prompt digest that gave it."""

    def __init__(self, inner: ModelCalls, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _ask(self, task: str, ticket: Ticket, key: str, call: Callable[[CallHook], Any], on_call: CallHook | None) -> Any:
        calls: list[Any] = []

        def hook(c: Any) -> None:
            calls.append(c)
            if on_call is not None:
                on_call(c)

        try:
            value = call(hook)
        except Exception as e:
            self.recorder.record(ticket.tenant, "model", task, key, {"error": type(e).__name__},
                                 meta=self._meta(task, calls), customer=ticket.customer_id)
            raise
        self.recorder.record(ticket.tenant, "model", task, key, value, meta=self._meta(task, calls),
                             customer=ticket.customer_id)
        return value

    @staticmethod
    def _meta(task: str, calls: list[Any]) -> dict[str, Any]:
        last = calls[-1] if calls else None
        return {"model": getattr(last, "model", None), "provider": getattr(last, "provider", None),
                "degraded": bool(getattr(last, "degraded", False)), "attempts": len(calls),
                "routing": getattr(last, "routing", None), "prompts": prompts_digest(task)}

    def triage(self, ticket: Ticket, *, on_call: CallHook | None = None) -> TriageResult:
        return self._ask("triage", ticket, model_input_digest("triage", ticket),
                         lambda hook: self.inner.triage(ticket, on_call=hook), on_call)

    def extract(self, ticket: Ticket, route: Route, *, on_call: CallHook | None = None) -> Extraction:
        return self._ask("extract", ticket, model_input_digest("extract", ticket, route),
                         lambda hook: self.inner.extract(ticket, route, on_call=hook), on_call)

    def plan(self, planning: PlanningInput, *, on_call: CallHook | None = None) -> PlanProposal:
        return self._ask("plan", planning.ticket, model_input_digest("plan", planning),
                         lambda hook: self.inner.plan(planning, on_call=hook), on_call)


class RecordingTools:
    """:class:`~graphs.context.ToolCalls` that records each call's arguments and result."""

    def __init__(self, inner: ToolCalls, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        result = self.inner.call(name, args, ctx)
        self.recorder.record(ctx.tenant, "tool", name, tool_input_digest(name, args), result,
                             input={"args": dict(args), "idempotency_key": ctx.idempotency_key}, customer=ctx.customer_id)
        return result


class RecordingReads:
    """:class:`~graphs.context.BackOfficeReads` that records each read (any method: a
    tool's VERIFY read may use more than the protocol names)."""

    def __init__(self, inner: BackOfficeReads, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name.startswith("_") or not name.startswith(("get_", "list_")):
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            value = attr(*args, **kwargs)
            if not kwargs and args and isinstance(args[0], str):
                self.recorder.record(args[0], "read", name, read_input_digest(name, args), value, input=list(args))
            return value

        return read


class RecordingRefunds:
    """:class:`~graphs.context.RefundLedger` whose reads of a customer's refunds are recorded
    (holds and locks pass through untouched). A read inside a refund's own transaction (its
    last check, in the tool runner) is not: the refund's recorded result says what it decided,
    and a write there would share the tool's transaction."""

    def __init__(self, inner: RefundLedger, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def recent(self, tenant: str, customer_id: str, since: datetime, *, exclude_thread: str = "",
               exclude_keys: Sequence[str] = (), tx: Tx | None = None) -> list[dict[str, Any]]:
        rows = self.inner.recent(tenant, customer_id, since, exclude_thread=exclude_thread,
                                 exclude_keys=exclude_keys, tx=tx)
        if tx is not None:  # a refund's last check inside its own transaction: its result is the tool's
            return rows
        self.recorder.record(tenant, "refunds", "recent", read_input_digest("recent", [tenant, customer_id]), rows,
                             input={"since": since.isoformat()}, customer=customer_id)
        return rows

    def hold(self, tenant: str, thread_id: str, plan_hash: str, customer_id: str,
             refunds: Iterable[tuple[int, str, int]], now: datetime) -> None:
        self.inner.hold(tenant, thread_id, plan_hash, customer_id, refunds, now)

    def lock(self, tx: Tx, tenant: str, customer_id: str) -> None:
        self.inner.lock(tx, tenant, customer_id)


def recording_context(ctx: SupportContext, store: RunRecordings) -> SupportContext:
    """``ctx`` with its model gateway, tools, back-office reads, refund history and run
    clock recorded into ``store`` for the graph run it serves."""
    rec = Recorder(store)
    return dataclasses.replace(
        ctx,
        gateway=RecordingGateway(ctx.gateway, rec),
        tools=RecordingTools(ctx.tools, rec),
        backoffice=RecordingReads(ctx.backoffice, rec),
        refunds=RecordingRefunds(ctx.refunds, rec),
        clock=rec.clock(ctx.clock),
    )
