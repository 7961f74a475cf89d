"""keel's traces on a runtime: the run and queue-wait spans of the worker, node spans from
LangGraph's callbacks, policy-decision and approval spans, and reading a thread's trace.

The spans themselves and where they go are :mod:`keel.telemetry`'s; this module wires them
to the runtime (its database as the span store, the DLP guard as the redactor) and to the
graph (a LangChain callback handler opens a span per node, so nodes need no tracing code
of their own and any graph of ``langgraph.json`` is traced alike).

LangSmith: LangChain and LangGraph add their LangSmith tracer themselves when the standard
variables are set (``LANGSMITH_TRACING=true``, ``LANGSMITH_API_KEY``, ``LANGSMITH_PROJECT``);
keel passes its handler alongside, never instead, so both work together. Off by default.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.errors import GraphInterrupt, ParentCommand
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from guards.dlp import redact
from keel import metrics, telemetry
from keel.telemetry import SpanStore, set_attributes

__all__ = ["format_tree", "install_tracing", "span_store", "NodeSpans", "run_span", "run_outcome", "record_run_end", "TracedJudge",
           "approval_span", "thread_trace"]

_STORES: weakref.WeakKeyDictionary[Any, SpanStore] = weakref.WeakKeyDictionary()


def span_store(runtime: Any) -> SpanStore:
    """The runtime's span store (table created on first use)."""
    store = _STORES.get(runtime.db)
    if store is None:
        with runtime.setup_lock() if hasattr(runtime, "setup_lock") else contextlib.nullcontext():
            store = SpanStore(runtime.db).setup()
        _STORES[runtime.db] = store
    return store


def install_tracing(runtime: Any) -> SpanStore:
    """Tracing for a process serving ``runtime``: keel's provider with DLP redaction and OTLP
    when configured; returns the span store its spans are kept in."""
    telemetry.install(redact)
    return span_store(runtime)


# ------------------------------------------------------------------ the run
def _epoch_ns(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return None


def run_attributes(run: dict[str, Any]) -> dict[str, Any]:
    """keel's attributes of a run (on its run and queue-wait spans)."""
    return {"keel.run_id": run["run_id"], "keel.thread_id": run["thread_id"], "keel.tenant": run["tenant"],
            "keel.graph_id": run["graph_id"], "keel.run.kind": run["kind"], "keel.run.attempt": run.get("attempts"),
            "keel.correlation_id": run.get("correlation_id")}


@contextlib.contextmanager
def run_span(runtime: Any, run: dict[str, Any], worker_id: str) -> Iterator[trace.Span]:
    """The ``run`` span of one attempt, continuing the trace of the request that queued it
    (``traceparent`` on the run row), after a ``queue.wait`` span from the run's creation (or
    its latest retry) to now. Spans ending inside go to the runtime's store."""
    store = install_tracing(runtime)
    tr = telemetry.tracer()
    parent = telemetry.context_from_traceparent(run.get("traceparent"))
    attrs = run_attributes(run)
    with telemetry.use_sink(store):
        queued_ns = _epoch_ns(run.get("created_at")) if run.get("attempts", 1) <= 1 else None
        if queued_ns is None:
            queued_ns = int(float(run.get("available_at") or time.time()) * 1e9)
        now_ns = time.time_ns()
        wait = tr.start_span("queue.wait", context=parent, kind=SpanKind.CONSUMER, start_time=min(queued_ns, now_ns))
        set_attributes(wait, {**attrs, "messaging.system": "keel", "messaging.operation.type": "receive",
                              "keel.queue.wait_ms": round((now_ns - queued_ns) / 1e6, 3)})
        wait.end(end_time=now_ns)
        labels = telemetry.run_labels.set({"tenant": run["tenant"], "thread_id": run["thread_id"],
                                           "run_id": run["run_id"], "graph_id": run["graph_id"]})
        try:
            with tr.start_as_current_span(f"run {run['graph_id']}", context=parent, kind=SpanKind.INTERNAL,
                                          record_exception=True) as span:
                set_attributes(span, {**attrs, "keel.worker": worker_id})
                yield span
        finally:
            telemetry.run_labels.reset(labels)


def run_outcome(graph: Any, run: dict[str, Any], thread_status: str, *, values: Any = None) -> str:
    """The outcome label of a run that ran to its end: the workflow's own ``status`` in its
    state (completed, awaiting_approval, escalated, rejected) when it has one (``values``:
    the final state values when the caller already read them)."""
    if values is None:
        try:
            values = graph.get_state({"configurable": {"thread_id": run["thread_id"]}}).values or {}
        except Exception:  # noqa: BLE001 - the label falls back to the thread's status
            values = {}
    status = values.get("status") if isinstance(values, dict) else None
    route = values.get("route") if isinstance(values, dict) else None
    if isinstance(route, str):  # the workflow's route decision, on the run's span
        trace.get_current_span().set_attribute("keel.route.name", route)
    if isinstance(status, str) and status in ("completed", "awaiting_approval", "escalated", "rejected", "running"):
        return status
    return "completed" if thread_status == "idle" else "interrupted"


def record_run_end(workflow: str, outcome: str) -> None:
    """Count the run's outcome and put it on its (current) span."""
    metrics.run_ended(workflow, outcome)
    if outcome == "lease_lost":
        metrics.LEASES_LOST.labels(workflow=workflow).inc()
    span = trace.get_current_span()
    span.set_attribute("keel.run.outcome", outcome)
    if outcome in ("error", "dead"):
        span.set_status(Status(StatusCode.ERROR, outcome))


# ------------------------------------------------------------------ nodes
class NodeSpans(BaseCallbackHandler):
    """A span per graph node (``node NAME``, with ``keel.node`` and ``keel.graph_id``), made
    current while the node runs so model, tool and policy spans nest under it; and the node
    latency histogram."""

    run_inline = True
    raise_error = False

    def __init__(self, graph_id: str) -> None:
        self.graph_id = graph_id
        self._open: dict[UUID, tuple[trace.Span, object, float, str]] = {}

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        node = (metadata or {}).get("langgraph_node")
        if not node or kwargs.get("name") != node or node.startswith("__"):
            return
        span = telemetry.tracer().start_span(f"node {node}")
        set_attributes(span, {"keel.node": node, "keel.graph_id": self.graph_id,
                              "keel.node.step": (metadata or {}).get("langgraph_step"),
                              "keel.thread_id": (metadata or {}).get("thread_id"),
                              "keel.run_id": (metadata or {}).get("run_id"),
                              "keel.tenant": (metadata or {}).get("tenant")})
        token = otel_context.attach(trace.set_span_in_context(span))
        self._open[run_id] = (span, token, time.perf_counter(), node)

    def _close(self, run_id: UUID, error: BaseException | None) -> None:
        entry = self._open.pop(run_id, None)
        if entry is None:
            return
        span, token, t0, node = entry
        if error is not None and not isinstance(error, (GraphInterrupt, ParentCommand)):
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif error is not None:
            span.set_attribute("keel.node.interrupted", True)
        metrics.NODE_SECONDS.labels(workflow=self.graph_id, node=node).observe(time.perf_counter() - t0)
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - ended in another context: the span still ends
            pass
        span.end()

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error)


# ------------------------------------------------------------------ policy decisions
class TracedJudge:
    """The policy engine with a ``policy.decide`` span per plan decided (``keel.policy.*``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluate_plan(self, actions: Sequence[Any], facts: Any, route: Any, injection_flagged: bool = False) -> Any:
        with telemetry.tracer().start_as_current_span("policy.decide") as span:
            decision = self.inner.evaluate_plan(actions, facts, route, injection_flagged)
            set_attributes(span, {
                "keel.policy.decision": str(getattr(decision, "overall", "")),
                "keel.policy.reason_codes": list(getattr(decision, "reason_codes", []) or []),
                "keel.policy.version": getattr(decision, "policy_version", None),
                "keel.policy.sha256": getattr(decision, "policy_sha256", None),
                "keel.policy.actions": [str(getattr(a, "tool", "")) for a in actions],
                "keel.policy.injection_flagged": bool(injection_flagged),
                "keel.route.name": str(route) if route is not None else None,
            })
            return decision


# ------------------------------------------------------------------ approvals
@contextlib.contextmanager
def approval_span(runtime: Any, tenant: str, thread_id: str, graph_id: str, payload: Any,
                  requested_at: str | None) -> Iterator[trace.Span]:
    """An ``approval.decide`` span around an approval decision (``keel.approval.*``), and the
    approval wait histogram when the decision is accepted."""
    store = install_tracing(runtime)
    decision = payload.get("decision") if isinstance(payload, dict) else None
    with telemetry.use_sink(store), telemetry.tracer().start_as_current_span("approval.decide") as span:
        set_attributes(span, {"keel.tenant": tenant, "keel.thread_id": thread_id, "keel.graph_id": graph_id,
                              "keel.approval.decision": decision if isinstance(decision, str) else None,
                              "keel.approval.plan_hash": payload.get("plan_hash") if isinstance(payload, dict) else None})
        try:
            yield span
        except Exception as e:
            span.set_attribute("keel.approval.outcome", getattr(e, "code", type(e).__name__))
            raise
        span.set_attribute("keel.approval.outcome", "accepted")
        asked = _epoch_ns(requested_at)
        if asked is not None:
            wait_s = max(0.0, (time.time_ns() - asked) / 1e9)
            span.set_attribute("keel.approval.wait_s", round(wait_s, 3))
            metrics.APPROVAL_WAIT.labels(workflow=graph_id, decision=str(decision)).observe(wait_s)


# ------------------------------------------------------------------ reading a trace
def thread_trace(runtime: Any, tenant: str | None, thread_id: str) -> list[dict[str, Any]]:
    """The thread's traces as trees of spans with timings (oldest first; ``tenant`` None:
    whoever's thread it is, for the operator's CLI)."""
    store = span_store(runtime)
    telemetry.flush_store(2.0)  # this process's spans that ended a moment ago
    return telemetry.span_rows_tree(store.thread_spans(tenant, thread_id))


_SHOWN = ("gen_ai.request.model", "gen_ai.tool.name", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
          "keel.policy.decision", "keel.policy.reason_codes", "keel.approval.decision", "keel.approval.outcome",
          "keel.run.outcome", "keel.route.rule", "keel.tool.ok", "error.type", "http.response.status_code",
          "keel.queue.wait_ms")


def format_tree(roots: Sequence[dict[str, Any]]) -> list[str]:
    """Text lines of span trees: ``name  duration  key attributes``, indented by depth."""
    lines: list[str] = []

    def walk(n: dict[str, Any], depth: int) -> None:
        attrs = n["attributes"]
        shown = " ".join(f"{k.split('.', 1)[-1]}={attrs[k]}" for k in _SHOWN if k in attrs)
        status = " ERROR" if n["status"] == "error" else ""
        lines.append(f"{'  ' * depth}{n['name']:<{max(1, 44 - 2 * depth)}} {n['duration_ms']:>10.1f} ms{status}"
                     f"{'  ' + shown if shown else ''}")
        for c in n["children"]:
            walk(c, depth + 1)

    for root in roots:
        lines.append(f"trace {root['trace_id']}")
        walk(root, 1)
    return lines
