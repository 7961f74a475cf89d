"""``GET /threads/{id}/trace``: the thread's traces as span trees with timings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict

from api.deps import ApiState, get_principal, get_state
from api.services import thread_or_404
from engine.tracing import thread_trace
from keel.principals import Principal

router = APIRouter(tags=["audit"])


class SpanOut(BaseModel):
    """One span and the spans under it."""

    model_config = ConfigDict(frozen=True)

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    """Start, in nanoseconds since the Unix epoch."""
    duration_ms: float
    status: str
    """``unset``, ``ok`` or ``error``."""
    status_message: str | None = None
    attributes: dict[str, Any]
    """OpenTelemetry attributes (``gen_ai.*``, ``keel.*``, ``http.*``), DLP-redacted."""
    children: list[SpanOut]


class TraceOut(BaseModel):
    """A thread's traces: one per run (its root: the API request that queued it), oldest first."""

    model_config = ConfigDict(frozen=True)

    thread_id: str
    traces: list[SpanOut]


@router.get("/threads/{thread_id}/trace", summary="Trace of a thread", response_model=TraceOut)
def get_trace(thread_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """One trace per run (API request → queue wait → run → nodes → model, tool, policy and
    approval spans), each span with its start, duration in milliseconds, status and
    attributes (DLP-redacted), oldest first."""
    thread_or_404(st.queue, p, thread_id)
    return {"thread_id": thread_id, "traces": thread_trace(st.runtime, p.tenant, thread_id)}
