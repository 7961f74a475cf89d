"""Small helpers shared by the support nodes: audit, tool context, escalation updates.

Each takes the run's :class:`~graphs.context.SupportContext` (``runtime.context`` in a
node), never a process-wide object.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import wraps
from typing import Any
from collections.abc import Callable

from langgraph.config import get_config

from graphs.context import SupportContext
from graphs.state import OutputAction, SupportState
from keel.errors import is_database_outage
from keel.types import Ticket
from tools.runner import ToolContext

__all__ = [
    "TokenBudgetExceeded",
    "model_hook",
    "ask_model","ticket_of", "audit", "tool_context", "escalation", "output_actions", "traced", "allowlist", "record_status",
    "attempt_budget", "raise_if_infrastructure"]

log = logging.getLogger("keel.nodes")


def ticket_of(state: SupportState) -> Ticket:
    """The run's ticket as a typed value."""
    return Ticket.model_validate(state["ticket"])


def allowlist(ctx: SupportContext, route: str) -> frozenset[str]:
    """The specialist's tool allowlist from the policy pack (empty for unknown routes)."""
    spec = ctx.policy.routes.get(route)
    return frozenset(spec.tools) if spec is not None else frozenset()


def raise_if_infrastructure(exc: BaseException) -> None:
    """Re-raise ``exc`` if it is the database failing (a lost connection, a server restart,
    an exhausted pool), not the model or its output.

    Nodes turn model failures into an escalation (``model_unavailable``); the audit and
    token-budget writes of a model call run inside those ``try`` blocks, and a database
    outage there is not the model's verdict: it must fail the step so that the worker
    retries it from the last checkpoint (:func:`keel.errors.is_database_outage`).
    """
    if is_database_outage(exc):
        raise exc


def ask_model(ctx: SupportContext, state: SupportState, task: str,
              call: Callable[[Callable[[Any], None]], Any]) -> tuple[Any, dict[str, Any] | None]:
    """One gateway call for a node: ``(value, None)``, or ``(None, escalation update)``.

    ``call`` receives the node's ``on_call`` hook (audit and token charge). A spent
    token budget escalates ``budget_exceeded``; a model that fails or keeps returning
    invalid output escalates ``model_unavailable``; a database outage is re-raised so the
    worker retries the step.
    """
    try:
        return call(model_hook(ctx, state)), None
    except TokenBudgetExceeded:
        return None, escalation("budget_exceeded")
    except Exception as e:  # ModelError and friends: never trust, never crash the run
        raise_if_infrastructure(e)
        audit(ctx, state, "model_call", {"task": task, "error": type(e).__name__})
        return None, escalation("model_unavailable")


def attempt_budget(budget: dict[str, Any]) -> dict[str, Any]:
    """The run budget as its wall-clock cap sees it: counted from this attempt's start at the latest.

    A worker (re)starting a run passes ``attempt_started_at`` in the run config. Time the
    run spent before that attempt (queued for a retry, waiting for a dead worker's lease to
    expire, dead-lettered until an admin retried it) is not run time, as days waiting for
    an approval are not; retries are bounded by the retry budget instead.
    """
    try:
        started = (get_config().get("configurable") or {}).get("attempt_started_at")
    except Exception:  # not inside a graph run (direct calls, tests)
        return budget
    if not started or not budget.get("started_at"):
        return budget
    if datetime.fromisoformat(str(started)) > datetime.fromisoformat(str(budget["started_at"])):
        return {**budget, "started_at": str(started)}
    return budget


def audit(ctx: SupportContext, state: SupportState, kind: str, data: dict[str, Any], actor: str = "system") -> None:
    """Append an audit row for this run."""
    ticket = state.get("ticket") or {}
    ctx.audit.append(
        str(ticket.get("tenant", "unknown")),
        kind,  # type: ignore[arg-type]
        actor=actor,
        data=data,
        thread_id=state.get("thread_id"),
        correlation_id=state.get("correlation_id"),
    )


def record_status(ctx: SupportContext, state: SupportState, status: str, plan_hash: str | None = None) -> None:
    """Keep the run index in step with the run's status."""
    ticket = state.get("ticket") or {}
    if not state.get("thread_id"):
        return
    ctx.run_index.record(
        state["thread_id"],
        tenant=str(ticket.get("tenant", "unknown")),
        status=status,
        ticket_id=ticket.get("id"),
        requester=state.get("requester"),
        route=state.get("route"),
        plan_hash=plan_hash,
    )


def tool_context(ctx: SupportContext, state: SupportState, idempotency_key: str | None = None) -> ToolContext:
    """The tool runner's view of this run: tenant, customer, caller, allowlist, key."""
    ticket = state["ticket"]
    return ToolContext(
        tenant=ticket["tenant"],
        customer_id=ticket["customer_id"],
        user_id=state.get("requester", "anonymous"),
        allowlist=allowlist(ctx, state.get("route", "unknown")),
        idempotency_key=idempotency_key,
        correlation_id=state.get("correlation_id", ""),
        now=ctx.clock(),
    )


class TokenBudgetExceeded(Exception):
    """The tenant's (or the requester's) daily model-token budget is spent: the run escalates
    ``budget_exceeded``."""


def model_hook(ctx: SupportContext, state: SupportState) -> Callable[[Any], None]:
    """The gateway hook for one node: audits each model call and charges the tenant.

    Refuses up front when the tenant's day is already spent. A call's tokens are charged
    after it returns (they are spent either way), so one call may overdraw the day; the
    next model call of that tenant is then refused.
    """
    tenant = str(state["ticket"]["tenant"])
    user = state.get("requester")  # the user's daily share too, not only the tenant's
    clock = ctx.quota_clock  # KEEL_NOW or the wall clock: never the demo's frozen day (quotas must reset)
    if ctx.quotas.remaining(tenant, clock(), user=user) <= 0:
        raise TokenBudgetExceeded()

    def on_call(call: Any) -> None:
        audit(ctx, state, "model_call", call.model_dump(mode="json"), actor=f"model:{call.provider}")
        ctx.quotas.charge(tenant, call.tokens, clock(), allow_overdraft=True, user=user)

    return on_call


def escalation(*reason_codes: str, **extra: Any) -> dict[str, Any]:
    """State update that sends the run to ESCALATE_TO_HUMAN with these reasons."""
    codes: list[str] = []
    for c in reason_codes:
        if c and c not in codes:
            codes.append(c)
    return {"status": "escalated", "reason_codes": codes, **extra}


def output_actions(state: SupportState, states: list[str] | None = None) -> list[OutputAction]:
    """The plan's actions with their policy decision and run state (batch contract)."""
    plan = (state.get("plan") or {}).get("plan") or {}
    actions = plan.get("actions") or []
    per = ((state.get("policy") or {}).get("per_action")) or []
    out: list[OutputAction] = []
    for i, a in enumerate(actions):
        decision = per[i]["decision"] if i < len(per) else None
        st = states[i] if states and i < len(states) else "not_run"
        out.append({"tool": a["tool"], "args": a["args"], "decision": decision, "state": st})
    return out


def traced(name: str) -> Callable:
    """Log each node's start, end and duration with the run's correlation id."""

    def deco(fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(state: SupportState, *args: Any, **kwargs: Any) -> Any:
            cid = state.get("correlation_id", "-")
            t0 = time.perf_counter()
            try:
                result = fn(state, *args, **kwargs)
            except Exception as e:  # GraphInterrupt is an Exception too: log it plainly
                kind = type(e).__name__
                log.info("node=%s cid=%s outcome=%s ms=%.1f", name, cid, kind, (time.perf_counter() - t0) * 1000)
                raise
            ms = (time.perf_counter() - t0) * 1000
            status = (result or {}).get("status", "-") if isinstance(result, dict) else "-"
            log.info("node=%s cid=%s status=%s ms=%.1f", name, cid, status, ms)
            return result

        return wrapper

    return deco
