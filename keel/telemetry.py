"""Traces: keel's OpenTelemetry tracer, the span store in keel's database, and OTLP export.

One trace per run: the API request that queues a run records the W3C ``traceparent`` of its
span on the run row (:func:`current_traceparent`), and the worker that executes the run
continues that trace (:func:`context_from_traceparent`), in another process or host.

Where spans go:

* **keel's database, always** (:class:`SpanStore`, table ``keel_spans``): ``GET
  /threads/{id}/trace`` and ``keel trace THREAD`` read them back as a tree. Spans are
  queued when they end and written by one background thread per process, in batches (it
  lingers ``SPAN_WRITE_LINGER_S`` for the rest of a run's spans), so a span that
  ends inside a database transaction never waits on (or deadlocks with) that transaction.
  Which database a span belongs to is the sink active where it ended (:func:`use_sink`:
  the API sets its runtime's for each request, the worker for each run).
* **an OTLP collector, when configured** with the standard variables
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, headers,
  ``OTEL_SERVICE_NAME``…), over OTLP/HTTP protobuf.

Everything exported, to either place, passes the redactor given to :func:`install` (the
DLP guard's): attribute values, event attributes and status messages. keel sits below the
guards, so the redactor is handed in by the engine rather than imported here.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel.db import Database

__all__ = ["tracer", "provider", "install", "SpanStore", "use_sink", "current_traceparent",
           "context_from_traceparent", "queued_run_traceparent", "flush", "flush_store", "request_span", "record_span", "run_labels", "Redactor", "redact_span", "set_attributes", "span_rows_tree"]

log = logging.getLogger("keel.telemetry")

Redactor = Callable[[Any], Any]
"""What scrubs a value before it leaves the process (``guards.dlp.redact``)."""

SERVICE_NAME = "keel"
_PROPAGATOR = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider: TracerProvider | None = None
_redact: Redactor = lambda v: v  # noqa: E731 - replaced by install(); keel alone has no DLP guard
_otlp_endpoints: set[str] = set()

_SCHEMA_LOCK = 72616521
"""The advisory lock keel's schema set-ups share (``engine.queue.schema.SCHEMA_LOCK``)."""

_DDL = """
CREATE TABLE IF NOT EXISTS keel_spans (
  trace_id TEXT NOT NULL,
  span_id TEXT NOT NULL,
  parent_id TEXT,
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  thread_id TEXT,
  run_id TEXT,
  tenant TEXT,
  start_ns BIGINT NOT NULL,
  end_ns BIGINT NOT NULL,
  status TEXT NOT NULL,
  status_message TEXT,
  attributes TEXT NOT NULL,
  events TEXT NOT NULL,
  PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS keel_spans_thread ON keel_spans (thread_id, start_ns);
CREATE INDEX IF NOT EXISTS keel_spans_trace ON keel_spans (trace_id)
"""


# ------------------------------------------------------------------ the tracer
def provider() -> TracerProvider:
    """keel's tracer provider (one per process; the global one when keel set it)."""
    global _provider
    with _lock:
        if _provider is None:
            current = trace.get_tracer_provider()
            if isinstance(current, TracerProvider):  # an embedding app configured the SDK: join it
                _provider = current
            else:
                _provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
                    "OTEL_SERVICE_NAME", SERVICE_NAME)}))
                _provider.add_span_processor(_SinkProcessor())
                trace.set_tracer_provider(_provider)
                current = trace.get_tracer_provider()
                if current is not _provider:  # someone else won the race: theirs is global
                    _provider = current  # type: ignore[assignment]
            if not any(isinstance(p, _SinkProcessor) for p in _processors(_provider)):
                _provider.add_span_processor(_SinkProcessor())
        return _provider


def _processors(p: TracerProvider) -> Sequence[SpanProcessor]:
    return getattr(getattr(p, "_active_span_processor", None), "_span_processors", ())


_tracer: tuple[TracerProvider, trace.Tracer] | None = None
"""keel's tracer and the provider it came from (every span of a run asks for it)."""


def tracer() -> trace.Tracer:
    """The tracer keel's spans are made with (made once per provider: ``provider()`` takes a
    lock and looks through the span processors, on every span otherwise)."""
    global _tracer
    cached = _tracer
    if cached is not None and cached[0] is _provider:
        return cached[1]
    p = provider()
    t = p.get_tracer("keel")
    _tracer = (p, t)
    return t


def install(redact: Redactor | None = None) -> TracerProvider:
    """Set keel's provider up (idempotent): the redactor, and an OTLP exporter when the
    standard variables name an endpoint (added once per endpoint)."""
    global _redact
    p = provider()
    if redact is not None:
        _redact = redact
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint and os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none":
        with _lock:
            if endpoint not in _otlp_endpoints:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                _otlp_endpoints.add(endpoint)
                p.add_span_processor(BatchSpanProcessor(_Redacting(OTLPSpanExporter())))
    return p


def flush(timeout_s: float = 5.0) -> None:
    """Export what has ended: OTLP batches and the database writer's queue."""
    provider().force_flush(int(timeout_s * 1000))
    _writer().drain(timeout_s)


def flush_store(timeout_s: float = 2.0) -> bool:
    """Write this process's ended spans to their databases now (no network export)."""
    if _writer_instance is None:  # nothing was ever queued: no writer to start
        return True
    return _writer().drain(timeout_s)


# ------------------------------------------------------------------ propagation
def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span (None outside one)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def queued_run_traceparent(tenant: str, thread_id: str, run_id: str) -> str | None:
    """The ``traceparent`` to store on a run being queued now; the current span (the API
    request's) is marked with the run, so keel's store keeps it as the root of the run's trace."""
    span = trace.get_current_span()
    if span.is_recording():
        set_attributes(span, {"keel.tenant": tenant, "keel.thread_id": thread_id, "keel.run_id": run_id})
    return current_traceparent()


def context_from_traceparent(traceparent: str | None) -> otel_context.Context | None:
    """The context to continue a trace in (None: start a new one)."""
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def set_attributes(span: trace.Span, attrs: Mapping[str, Any]) -> None:
    """Set the attributes whose values OpenTelemetry can carry (None skipped, others as text)."""
    for k, v in attrs.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = [x if isinstance(x, (str, bool, int, float)) else str(x) for x in v]
        elif not isinstance(v, (str, bool, int, float)):
            v = str(v)
        span.set_attribute(k, v)


@contextlib.contextmanager
def request_span(scope: Mapping[str, Any], store: SpanStore | None) -> Iterator[Callable[[int], None]]:
    """The SERVER span of one HTTP request (an ASGI ``scope``), current while it is handled;
    yields the function to report the response status with. An incoming ``traceparent``
    header is continued. Named ``METHOD /route/{template}`` once routing has matched. keel's
    store keeps it only when it queued a run (:func:`queued_run_traceparent` marks it)."""
    method = str(scope.get("method", "GET"))
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    parent = context_from_traceparent(headers.get("traceparent"))
    status: dict[str, int] = {}
    with use_sink(store), tracer().start_as_current_span(method, context=parent, kind=trace.SpanKind.SERVER) as span:
        set_attributes(span, {"http.request.method": method, "url.path": scope.get("path"),
                              "keel.correlation_id": headers.get("x-request-id")})
        yield lambda code: status.update(code=code)
        template = getattr(scope.get("route"), "path", None)
        if template:
            span.update_name(f"{method} {template}")
            span.set_attribute("http.route", template)
        if "code" in status:
            span.set_attribute("http.response.status_code", status["code"])
            if status["code"] >= 500:
                span.set_status(Status(trace.StatusCode.ERROR, f"HTTP {status['code']}"))


run_labels: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar("keel_run_labels",
                                                                              default=MappingProxyType({}))
"""``{tenant, thread_id, run_id, graph_id}`` of the run executing in this context (set by the
worker; LangGraph copies it into its node threads): log lines and per-tenant metrics read it."""


def record_span(name: str, start_ns: int, attrs: Mapping[str, Any], *, error: str | None = None,
                kind: trace.SpanKind = trace.SpanKind.INTERNAL) -> None:
    """A span for something that already happened (from ``start_ns`` to now), under the
    current span: for code that measures a call itself and reports it afterwards."""
    span = tracer().start_span(name, kind=kind, start_time=start_ns)
    labels = run_labels.get()
    set_attributes(span, {"keel.tenant": labels.get("tenant"), **attrs})
    if error:
        span.set_status(Status(trace.StatusCode.ERROR, error))
        span.set_attribute("error.type", error)
    span.end()


# ------------------------------------------------------------------ redaction
def _redact_value(v: Any) -> Any:
    if isinstance(v, str):
        return _redact(v)
    if isinstance(v, (list, tuple)):
        return tuple(_redact(x) if isinstance(x, str) else x for x in v)
    return v


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of ``span`` with every attribute, event attribute and status message redacted."""
    attrs = {k: _redact_value(v) for k, v in (span.attributes or {}).items()}
    events = [type(e)(e.name, {k: _redact_value(v) for k, v in (e.attributes or {}).items()}, e.timestamp)
              for e in span.events]
    status = span.status
    if status.description:
        status = Status(status.status_code, _redact(status.description))
    return ReadableSpan(name=span.name, context=span.context, parent=span.parent, resource=span.resource,
                        attributes=attrs, events=events, links=span.links, kind=span.kind, status=status,
                        start_time=span.start_time, end_time=span.end_time,
                        instrumentation_scope=span.instrumentation_scope)


class _Redacting(SpanExporter):
    """An exporter that only ever sees redacted spans."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact_span(s) for s in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# ------------------------------------------------------------------ the span store
class SpanStore:
    """keel's spans in its own database (table ``keel_spans``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> SpanStore:
        """Create the table (idempotent; on Postgres, concurrent first starts of several
        processes serialize on an advisory lock, as ``CREATE TABLE IF NOT EXISTS`` races)."""
        self.db.executescript(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK});" + _DDL if self.db.is_postgres else _DDL)
        return self

    def write(self, spans: Sequence[ReadableSpan]) -> None:
        """Store redacted spans (a span stored twice keeps its first row)."""
        rows = [_row(s, redacted=True) for s in spans]  # before the transaction: no connection held meanwhile
        with self.db.transaction() as tx:
            for r in rows:
                tx.execute(
                    "INSERT INTO keel_spans (trace_id, span_id, parent_id, name, kind, thread_id, run_id, tenant,"
                    " start_ns, end_ns, status, status_message, attributes, events)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    tuple(r[c] for c in ("trace_id", "span_id", "parent_id", "name", "kind", "thread_id", "run_id",
                                         "tenant", "start_ns", "end_ns", "status", "status_message", "attributes",
                                         "events")))

    def thread_spans(self, tenant: str | None, thread_id: str) -> list[dict[str, Any]]:
        """Every span of the traces that touched the tenant's thread, oldest first.

        A trace is selected by any of its spans naming the thread; its API request span
        (which names no thread until the run exists) comes with it. ``tenant`` None: any
        tenant's (the operator's CLI)."""
        where, params = ("thread_id = ?", [thread_id]) if tenant is None else (
            "thread_id = ? AND tenant = ?", [thread_id, tenant])
        sql = ("SELECT * FROM keel_spans WHERE trace_id IN (SELECT DISTINCT trace_id FROM keel_spans"
               f" WHERE {where}) ORDER BY start_ns, span_id")
        with self.db.transaction() as tx:
            out = tx.fetchall(sql, params)
        for r in out:
            r["attributes"] = json.loads(r["attributes"])
            r["events"] = json.loads(r["events"])
        return out


def _row(s: ReadableSpan, *, redacted: bool = False) -> dict[str, Any]:
    """The ``keel_spans`` row of ``s``; ``redacted``: attribute values, event attributes and the
    status message pass the redactor (what :func:`redact_span` does, without copying the span)."""
    red = _redact_value if redacted else (lambda v: v)
    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, red(v)) for k, v in (s.attributes or {}).items())}
    message = s.status.description
    if redacted and message:
        message = _redact(message)
    return {
        "trace_id": format(s.context.trace_id, "032x"),
        "span_id": format(s.context.span_id, "016x"),
        "parent_id": format(s.parent.span_id, "016x") if s.parent is not None else None,
        "name": s.name,
        "kind": s.kind.name.lower(),
        "thread_id": attrs.get("keel.thread_id"),
        "run_id": attrs.get("keel.run_id"),
        "tenant": attrs.get("keel.tenant"),
        "start_ns": s.start_time or 0,
        "end_ns": s.end_time or s.start_time or 0,
        "status": s.status.status_code.name.lower(),
        "status_message": message,
        "attributes": json.dumps(attrs, default=str),
        "events": json.dumps([{"name": e.name, "at_ns": e.timestamp,
                               "attributes": {k: red(v) for k, v in (e.attributes or {}).items()}}
                              for e in s.events], default=str),
    }


def span_rows_tree(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored spans as a forest: each node ``{name, span_id, trace_id, start, duration_ms,
    status, attributes, children}``; a span whose parent is not stored is a root."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in rows:
        nodes[r["span_id"]] = {
            "name": r["name"], "trace_id": r["trace_id"], "span_id": r["span_id"], "parent_id": r["parent_id"],
            "start_ns": int(r["start_ns"]), "duration_ms": round((int(r["end_ns"]) - int(r["start_ns"])) / 1e6, 3),
            "status": r["status"], "status_message": r.get("status_message"), "attributes": r["attributes"],
            "children": [],
        }
    roots: list[dict[str, Any]] = []
    for n in nodes.values():
        parent = nodes.get(n["parent_id"]) if n["parent_id"] else None
        (parent["children"] if parent is not None else roots).append(n)
    for n in nodes.values():
        n["children"].sort(key=lambda c: (c["start_ns"], c["span_id"]))
    roots.sort(key=lambda c: (c["start_ns"], c["span_id"]))
    return roots


# ------------------------------------------------------------------ routing spans to a store
_sink: contextvars.ContextVar[SpanStore | None] = contextvars.ContextVar("keel_span_sink", default=None)


@contextlib.contextmanager
def use_sink(store: SpanStore | None) -> Iterator[None]:
    """Spans that end in this context are stored in ``store``'s database."""
    token = _sink.set(store)
    try:
        yield
    finally:
        _sink.reset(token)


class _SinkProcessor(SpanProcessor):
    """Hands each ended span to the writer with the store active where it ended."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        store = _sink.get()
        if store is not None:  # a span may end in a thread without the context (a callback)
            _stores[span.context.span_id] = store

    def on_end(self, span: ReadableSpan) -> None:
        store = _stores.pop(span.context.span_id, None) or _sink.get()
        if span.kind == trace.SpanKind.SERVER and not (span.attributes or {}).get("keel.thread_id"):
            return  # a read, a poll, a probe: no thread's trace, nothing to keep (OTLP still gets it)
        if store is not None:
            _writer().put(store, span)

    def shutdown(self) -> None:
        _writer().drain(5.0)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return _writer().drain(timeout_millis / 1000)


_stores: dict[int, SpanStore] = {}


SPAN_WRITE_LINGER_S = 0.25
"""How long the span writer waits after the first span of a batch for more to end (the rest of
the run's spans) before it writes them, all in one transaction: a run's dozen or so spans then
cost a commit or two instead of one each. ``flush``/``flush_store`` cut the wait short."""


@dataclass
class _Writer:
    """One background thread per process writing ended spans in batches, per database."""

    q: queue.Queue[tuple[SpanStore, ReadableSpan] | None] = field(default_factory=queue.Queue)
    pending: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    linger_s: float = SPAN_WRITE_LINGER_S
    urgent: threading.Event = field(default_factory=threading.Event)
    """Set while someone waits in :meth:`drain`: the writer writes what it has at once."""

    def start(self) -> _Writer:
        threading.Thread(target=self._loop, name="keel-span-writer", daemon=True).start()
        return self

    def put(self, store: SpanStore, span: ReadableSpan) -> None:
        with self.cond:
            self.pending += 1
        self.q.put((store, span))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued span is written (or given up on)."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            if not self.pending:
                return True
            self.urgent.set()  # stop lingering: a reader wants them now (cleared once all are written)
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if self.linger_s > 0:
                self.urgent.wait(self.linger_s)  # more spans of the run end meanwhile: one commit for all
            batch = [item]
            while len(batch) < 500:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            by_store: dict[int, tuple[SpanStore, list[ReadableSpan]]] = {}
            for it in batch:
                if it is not None:
                    by_store.setdefault(id(it[0]), (it[0], []))[1].append(it[1])
            for store, spans in by_store.values():
                try:
                    store.write(spans)
                except Exception as e:  # noqa: BLE001 - tracing never breaks a run; the loss is logged
                    log.warning("could not store %d spans: %s: %s", len(spans), type(e).__name__, str(e)[:200])
            with self.cond:
                self.pending -= sum(1 for it in batch if it is not None)
                if not self.pending:
                    self.urgent.clear()
                self.cond.notify_all()


_writer_instance: _Writer | None = None


def _writer() -> _Writer:
    global _writer_instance
    with _lock:
        if _writer_instance is None:
            _writer_instance = _Writer().start()
        return _writer_instance
