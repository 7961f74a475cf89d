"""Crons (LangGraph Server's ``/runs/crons``): a run on a schedule, on one thread or on a new
thread each tick (stateless), fired by the workers exactly once per tick
(:mod:`engine.crons`). A cron belongs to its creator's tenant; another tenant's cron is
invisible (404). The input a cron will run with is checked when the cron is created, with
the same rules as a run's (a support cron runs a ticket of the caller's tenant)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import ApiState, get_principal, get_state, require_roles
from api.errors import http_error
from api.models import CronCount, CronCreate, CronOut, CronSearch, returns
from api.services import START_ROLES, check_cron_input, is_uuid, resolve_assistant, thread_or_404
from engine.crons import CronError
from engine.run_context import client_context_refusal
from keel.principals import Principal

router = APIRouter(tags=["crons"])

_DEFAULT_TZ = "UTC"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def cron_out(c: dict[str, Any]) -> dict[str, Any]:
    """A ``Cron`` shaped like LangGraph Server's."""
    return {
        "cron_id": c["cron_id"], "assistant_id": c["assistant_id"], "thread_id": c["thread_id"],
        "schedule": c["schedule"], "timezone": c["timezone"], "end_time": _iso(c["end_time"]),
        "created_at": c["created_at"], "updated_at": c["updated_at"], "payload": c["payload"],
        "user_id": c["created_by"], "next_run_date": _iso(c["next_run_at"]), "metadata": c["metadata"],
        "enabled": c["enabled"], "on_run_completed": None if c["thread_id"] else "keep",
    }


def _create(st: ApiState, p: Principal, body: CronCreate, thread_id: str | None) -> dict[str, Any]:
    aid, graph_id = resolve_assistant(body.assistant_id, st.runtime, p.tenant)
    if thread_id is not None:
        th = thread_or_404(st.queue, p, thread_id)
        if th.get("graph_id") and th["graph_id"] != graph_id:
            raise http_error(409, "graph_mismatch", f"thread runs graph {th['graph_id']!r}, not {graph_id!r}")
    if body.on_run_completed == "delete":
        raise http_error(422, "unsupported", "keel keeps every run's thread: send on_run_completed 'keep' or omit it")
    check_cron_input(graph_id, body.input, p)
    reason = client_context_refusal(st.runtime, graph_id, body.context)
    if reason is not None:
        raise http_error(422, "invalid_context", reason)
    modes = body.stream_mode if isinstance(body.stream_mode, list) else ([body.stream_mode] if body.stream_mode else [])
    payload = {k: v for k, v in {
        "input": body.input, "config": body.config.model_dump(exclude_none=True) if body.config else None,
        "context": body.context, "interrupt_before": body.interrupt_before, "interrupt_after": body.interrupt_after,
        "multitask_strategy": body.multitask_strategy, "stream_mode": modes or None,
    }.items() if v is not None}
    try:
        cron = st.runtime.crons.create(
            p.tenant, p.user_id, thread_id=thread_id, assistant_id=aid, graph_id=graph_id, schedule=body.schedule,
            timezone=body.timezone or _DEFAULT_TZ, payload=payload, metadata=body.metadata,
            enabled=body.enabled is not False, end_time=body.end_time.timestamp() if body.end_time else None)
    except CronError as e:
        raise http_error(422, "invalid_cron", str(e)) from None
    return cron_out(cron)


@router.post("/runs/crons", summary="Create a stateless cron", **returns(CronOut))
def create_cron(body: CronCreate, st: ApiState = Depends(get_state),
                p: Principal = Depends(require_roles(*START_ROLES))) -> dict[str, Any]:
    """Each tick runs on a new thread of the caller's tenant."""
    return _create(st, p, body, None)


@router.post("/threads/{thread_id}/runs/crons", summary="Create a cron on a thread", **returns(CronOut))
def create_thread_cron(thread_id: str, body: CronCreate, st: ApiState = Depends(get_state),
                       p: Principal = Depends(require_roles(*START_ROLES))) -> dict[str, Any]:
    """Each tick runs on this thread (queued behind a run in flight: multitask ``enqueue``)."""
    return _create(st, p, body, thread_id)


def _matches(c: dict[str, Any], metadata: dict[str, Any] | None) -> bool:
    return not metadata or all(c["metadata"].get(k) == v for k, v in metadata.items())


def _assistant_filter(st: ApiState, p: Principal, assistant_id: str | None) -> str | None:
    return resolve_assistant(assistant_id, st.runtime, p.tenant)[0] if assistant_id else None


@router.post("/runs/crons/search", summary="Search crons", **returns(list[CronOut | dict[str, Any]]))
def search_crons(body: CronSearch, st: ApiState = Depends(get_state),
                 p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """The tenant's crons, by assistant, thread, enabled and metadata, paged and sorted."""
    if body.thread_id is not None and not is_uuid(body.thread_id):
        return []
    kw = {"assistant_id": _assistant_filter(st, p, body.assistant_id), "thread_id": body.thread_id, "enabled": body.enabled,
          "sort_by": body.sort_by or "created_at", "sort_order": body.sort_order or "desc"}
    if body.metadata:
        rows = [c for c in st.runtime.crons.search(p.tenant, limit=1_000_000, **kw) if _matches(c, body.metadata)]
        rows = rows[body.offset: body.offset + body.limit]
    else:
        rows = st.runtime.crons.search(p.tenant, limit=body.limit, offset=body.offset, **kw)
    out = [cron_out(c) for c in rows]
    if body.select:
        out = [{k: v for k, v in c.items() if k in body.select} for c in out]
    return out


@router.post("/runs/crons/count", summary="Count crons")
def count_crons(body: CronCount, st: ApiState = Depends(get_state), p: Principal = Depends(get_principal)) -> int:
    """How many of the tenant's crons match."""
    if body.thread_id is not None and not is_uuid(body.thread_id):
        return 0
    aid = _assistant_filter(st, p, body.assistant_id)
    if body.metadata:
        return sum(_matches(c, body.metadata) for c in st.runtime.crons.search(
            p.tenant, assistant_id=aid, thread_id=body.thread_id, enabled=body.enabled, limit=1_000_000))
    return st.runtime.crons.count(p.tenant, assistant_id=aid, thread_id=body.thread_id, enabled=body.enabled)


@router.delete("/runs/crons/{cron_id}", status_code=204, summary="Delete a cron")
def delete_cron(cron_id: str, st: ApiState = Depends(get_state),
                p: Principal = Depends(require_roles(*START_ROLES))) -> Response:
    """No more ticks (a run already queued goes on)."""
    if not is_uuid(cron_id) or not st.runtime.crons.delete(p.tenant, cron_id):
        raise http_error(404, "cron_not_found", f"cron {cron_id} not found")
    return Response(status_code=204)
