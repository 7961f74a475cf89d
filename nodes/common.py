"""Small helpers shared by the support nodes: audit, tool context, escalation updates.

Each takes the run's context (``runtime.context`` in a node, never a process-wide object),
typed by the narrow protocol of :mod:`graphs.context` it uses; and the typed accessors
(``plan_of``, ``policy_of``, …) are the one place a state value stored as a plain dict is
parsed.
"""

from __future__ import annotations

import contextvars
import logging
import time
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar
from collections.abc import Callable

from langgraph.config import get_config
from pydantic import BaseModel, ValidationError

from graphs.context import AsksModels, Audits, IndexesRuns, ReadsPack, ScopesTools
from graphs.state import OutputAction, RetrievedContext, SupportState
from guards.injection import ScreenResult
from guards.policy import PlanDecision
from keel.errors import BudgetExceeded, is_database_outage
from keel.plan import SignedPlan
from keel.types import Extraction, Ticket, TriageResult
from tools.runner import ToolContext

__all__ = [
    "TokenBudgetExceeded",
    "model_hook",
    "ask_model", "ticket_of", "triage_of", "screen_of", "injection_flagged", "extraction_of", "context_of", "plan_of",
    "policy_of", "tenant_of", "audit", "tool_context", "escalation", "output_actions", "traced", "allowlist", "record_status",
    "attempt_budget", "raise_if_infrastructure", "marks_fallbacks"]

log = logging.getLogger("keel.nodes")

_M = TypeVar("_M", bound=BaseModel)


def _typed(value: Any, model: type[_M]) -> _M:
    """``value`` as ``model``: as is when it already is one (every value a node of this
    version wrote), parsed when it is the JSON dict of one (a checkpoint written before
    state was typed, or a value written through ``update_state``)."""
    return value if isinstance(value, model) else model.model_validate(value)


def ticket_of(state: SupportState) -> Ticket:
    """The run's ticket (TRIAGE validated it; only a run that escalated ``invalid_ticket``
    has none, and nodes after TRIAGE never see one)."""
    return _typed(state["ticket"], Ticket)


def tenant_of(state: SupportState) -> str:
    """The run's tenant for audit rows and the run index; ``unknown`` while the ticket is
    not a valid one (an ``invalid_ticket`` run still leaves its audit row)."""
    ticket = state.get("ticket")
    if isinstance(ticket, Ticket):
        return ticket.tenant
    tenant = ticket.get("tenant") if isinstance(ticket, dict) else None
    return str(tenant) if tenant else "unknown"


def triage_of(state: SupportState) -> TriageResult | None:
    """The router's verdict, if TRIAGE reached the model."""
    raw = state.get("triage")
    return None if raw is None else _typed(raw, TriageResult)


_CLEAN = ScreenResult(flagged=False, score=0.0)


def screen_of(state: SupportState) -> ScreenResult:
    """The injection screen of the run's text (a clean verdict before TRIAGE screened it)."""
    raw = state.get("screen")
    return _CLEAN if not raw else _typed(raw, ScreenResult)


def injection_flagged(state: SupportState) -> bool:
    """Whether the ticket or the text retrieved for it was flagged as a suspected injection.

    Fails closed: a screen in state that is not a screen (edited through ``update_state``)
    counts as flagged, so an edit can never lift a flag."""
    try:
        return screen_of(state).flagged
    except ValidationError:
        return True


def extraction_of(state: SupportState) -> Extraction | None:
    """The facts extracted from the ticket, once RETRIEVE_CONTEXT has asked the model."""
    raw = state.get("extraction")
    return None if raw is None else _typed(raw, Extraction)


def context_of(state: SupportState) -> RetrievedContext:
    """The records read for the plan (none before RETRIEVE_CONTEXT)."""
    raw = state.get("context")
    return RetrievedContext() if raw is None else _typed(raw, RetrievedContext)


def plan_of(state: SupportState) -> SignedPlan | None:
    """The signed plan, if one was proposed. Parsed, not verified: execution checks its
    hash and signature (``keel.plan.verify_plan``) before acting on it."""
    raw = state.get("plan")
    return None if raw is None else _typed(raw, SignedPlan)


def policy_of(state: SupportState) -> PlanDecision | None:
    """The policy verdict on the plan, if POLICY_CHECK (or a re-check after an edit) decided."""
    raw = state.get("policy")
    return None if raw is None else _typed(raw, PlanDecision)


def allowlist(ctx: ReadsPack, route: str) -> frozenset[str]:
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


def ask_model(ctx: AsksModels, state: SupportState, task: str,
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


def audit(ctx: Audits, state: SupportState, kind: str, data: dict[str, Any], actor: str = "system") -> None:
    """Append an audit row for this run."""
    ctx.audit.append(
        tenant_of(state),
        kind,  # type: ignore[arg-type]
        actor=actor,
        data=data,
        thread_id=state.get("thread_id"),
        correlation_id=state.get("correlation_id"),
    )


def record_status(ctx: IndexesRuns, state: SupportState, status: str, plan_hash: str | None = None) -> None:
    """Keep the run index in step with the run's status."""
    if not state.get("thread_id"):
        return
    ticket = state.get("ticket")
    ticket_id = ticket.id if isinstance(ticket, Ticket) else ticket.get("id") if isinstance(ticket, dict) else None
    ctx.run_index.record(
        state["thread_id"],
        tenant=tenant_of(state),
        status=status,
        ticket_id=None if ticket_id is None else str(ticket_id),
        requester=state.get("requester"),
        route=state.get("route"),
        plan_hash=plan_hash,
    )


def tool_context(ctx: ScopesTools, state: SupportState, idempotency_key: str | None = None) -> ToolContext:
    """The tool runner's view of this run: tenant, customer, caller, allowlist, key."""
    ticket = ticket_of(state)
    return ToolContext(
        tenant=ticket.tenant,
        customer_id=ticket.customer_id,
        user_id=state.get("requester", "anonymous"),
        allowlist=allowlist(ctx, state.get("route", "unknown")),
        idempotency_key=idempotency_key,
        correlation_id=state.get("correlation_id", ""),
        now=ctx.clock(),
    )


class TokenBudgetExceeded(BudgetExceeded):
    """The tenant's (or the requester's) daily model-token budget is spent: the run escalates
    ``budget_exceeded`` (the category's ``code``)."""


def model_hook(ctx: AsksModels, state: SupportState) -> Callable[[Any], None]:
    """The gateway hook for one node: audits each model call and charges the tenant.

    Refuses up front when the tenant's day is already spent. A call's tokens are charged
    after it returns (they are spent either way), so one call may overdraw the day; the
    next model call of that tenant is then refused.
    """
    tenant = ticket_of(state).tenant
    user = state.get("requester")  # the user's daily share too, not only the tenant's
    clock = ctx.quota_clock  # KEEL_NOW or the wall clock: never the demo's frozen day (quotas must reset)
    if ctx.quotas.remaining(tenant, clock(), user=user) <= 0:
        raise TokenBudgetExceeded()

    def on_call(call: Any) -> None:
        seen = _NODE_CALLS.get()
        if seen is not None:  # the node's ``marks_fallbacks`` reads them
            seen.append(call)
        audit(ctx, state, "model_call", call.model_dump(mode="json"), actor=f"model:{call.provider}")
        if call.tokens:  # a call that cost nothing (the local rules) changes no quota: no write
            ctx.quotas.charge(tenant, call.tokens, clock(), allow_overdraft=True, user=user)

    return on_call


_NODE_CALLS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("keel_node_model_calls", default=None)
"""The gateway calls of the node running in this context (set by :func:`marks_fallbacks`)."""


def marks_fallbacks(*, starts_run: bool = False) -> Callable:
    """Put ``degraded`` / ``degraded_causes`` in the state update of a node that asks the gateway.

    An answer from a fallback model (``GatewayCall.degraded``) marks the run, with the cause
    of each failed attempt before it, so API and Studio clients see it in the run's values
    (the batch output reads the same from the audit rows). Marks accumulate over the run's
    nodes; ``starts_run`` (TRIAGE) starts them afresh, as a new run on a thread does.
    """

    def deco(fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(state: SupportState, *args: Any, **kwargs: Any) -> Any:
            calls: list[Any] = []
            token = _NODE_CALLS.set(calls)
            try:
                result = fn(state, *args, **kwargs)
            finally:
                _NODE_CALLS.reset(token)
            if not isinstance(result, dict):
                return result
            return {**result, **_fallback_marks(state, calls, starts_run)}

        return wrapper

    return deco


def _fallback_marks(state: SupportState, calls: list[Any], starts_run: bool) -> dict[str, Any]:
    """The marks to add: none while no answer of the run was degraded (state keeps no
    ``degraded: false`` then, so an undegraded run's values are what they always were)."""
    if any(c.ok and c.degraded for c in calls):
        causes = [] if starts_run else list(state.get("degraded_causes") or [])
        causes += [f"{c.task}:{c.model or c.provider}:{c.error}" for c in calls if not c.ok and c.error]
        return {"degraded": True, "degraded_causes": causes}
    if starts_run and state.get("degraded"):  # a new run on a thread a degraded run left marked
        return {"degraded": False, "degraded_causes": []}
    return {}


def escalation(*reason_codes: str, **extra: Any) -> dict[str, Any]:
    """State update that sends the run to ESCALATE_TO_HUMAN with these reasons."""
    codes: list[str] = []
    for c in reason_codes:
        if c and c not in codes:
            codes.append(c)
    return {"status": "escalated", "reason_codes": codes, **extra}


def output_actions(state: SupportState, states: list[str] | None = None) -> list[OutputAction]:
    """The plan's actions with their policy decision and run state (batch contract)."""
    # reporting only: a plan or verdict that does not parse (an edited state, refused by
    # execution as plan_integrity) is reported as no actions or no decisions, never raised
    try:
        signed = plan_of(state)
    except ValidationError:
        signed = None
    try:
        verdict = policy_of(state)
    except ValidationError:
        verdict = None
    actions = signed.plan.actions if signed is not None else []
    per = verdict.per_action if verdict is not None else []
    out: list[OutputAction] = []
    for i, a in enumerate(actions):
        decision = per[i].decision if i < len(per) else None
        st = states[i] if states and i < len(states) else "not_run"
        out.append({"tool": a.tool, "args": dict(a.args), "decision": decision, "state": st})
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
