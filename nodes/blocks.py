"""keel's guarantees as building blocks: what any workflow's approval and execute steps are made of.

Support and supply (and any graph a user writes) call these instead of writing their own:

- :func:`decide`: **the** policy (re-)evaluation of a signed plan. POLICY_CHECK, the
  re-check after a reviewer's edit, EXECUTE's re-decision and a refund's last check under
  its lock all call it; :func:`stricter` keeps the stricter of a stored and a fresh verdict.
- :func:`approval_request` / :func:`await_approval`: the signed-plan approval interrupt
  (plan, plan hash, policy checks, evidence) and its resume, validated against the pack's
  ``[approvals]`` rules (:func:`guards.approvals.check_resume`); a refused resume asks
  again. An edit is applied downward only, the plan re-signed and decided again.
- :func:`execute_plan`: re-verify the plan's hash and HMAC and its owner, decide again,
  require an approval naming the same hash (in state and in the audit chain), then call
  each tool through the tool runner with an idempotency key derived from
  (thread, plan hash, index), so a resumed or re-run execution replays the ledger instead of
  acting twice; budgets and caps are charged and checked after each call.
- :func:`audit_run`, :func:`record_run`: the hash-chained audit log and the run index.

A workflow describes itself once with a :class:`Workflow` (who the run is for, which
records the policy reads, its allowlists and side-effecting tools); its context gives the
stores (:class:`GuardedContext`: what both ``SupportContext`` and ``SupplyContext`` hold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig
from langgraph.types import interrupt

from graphs.context import AuditTrail, Clock, RoleLookup, RunIndex, ToolCalls
from guards.approvals import ApprovalError, apply_edits, check_resume, decided_at
from guards.budgets import RunCaps, charge_tool_call, check
from guards.injection import reviewer_view
from guards.pack import ApprovalPolicy
from guards.policy import PlanDecision
from keel.db import Tx
from keel.errors import KeelError
from keel.plan import Plan, PlanIntegrityError, PlanKeys, SignedPlan, idempotency_key, sign_plan, verify_plan
from keel.types import ProposedAction
from nodes.common import attempt_budget, escalation, injection_flagged, output_actions, plan_of, policy_of
from tools.runner import ToolContext

__all__ = [
    "SEVERITY", "ToolFailure", "RunRef", "Workflow", "GuardedContext", "Judge",
    "audit_run", "record_run", "decide", "stricter", "approval_request", "await_approval", "approved_in_audit",
    "execute_plan", "sign", "correlation_of", "policy_gate", "finish", "untrusted_key", "UNTRUSTED_KEY",
]

UNTRUSTED_KEY = frozenset({"signing_key_retired", "signing_key_unknown"})
"""Codes of :mod:`keel.keys`' refusals: the plan's signing key is retired or not in the ring."""

SEVERITY: dict[str, int] = {"execute": 0, "approve": 1, "escalate": 2, "deny": 3}
"""Decisions from the mildest; a plan follows its strictest action."""


class ToolFailure(KeelError, RuntimeError):
    """A tool kept failing transiently past its retries: the run stops here, resumable.

    The checkpoint before the execute step survives, so a worker (or an admin's retry of a
    dead-lettered run) re-enters it; the ledger keeps completed actions from running twice.
    """

    code = "tool_failed"
    retryable = True
    """Workers retry a run that failed with this (backoff and jitter, then dead letter)."""


class Judge(Protocol):
    """A policy engine: decides a plan over its facts, purely (support's and supply's have this shape)."""

    def evaluate_plan(self, actions: Sequence[ProposedAction], facts: Any, route: Any,
                      injection_flagged: bool = False) -> PlanDecision: ...


class _Pack(Protocol):
    @property
    def approvals(self) -> ApprovalPolicy: ...

    @property
    def version(self) -> str: ...


class GuardedContext(Protocol):
    """What the blocks use of a workflow's run context (read-only fields of its dataclass)."""

    @property
    def policy(self) -> _Pack: ...

    @property
    def policy_engine(self) -> Judge: ...

    @property
    def caps(self) -> RunCaps: ...

    @property
    def tools(self) -> ToolCalls: ...

    @property
    def audit(self) -> AuditTrail: ...

    @property
    def run_index(self) -> RunIndex: ...

    @property
    def role_of(self) -> RoleLookup: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def signing_key(self) -> bytes | PlanKeys: ...


@dataclass(frozen=True, slots=True)
class RunRef:
    """Who and what a run is about, as audit rows, the run index and tool calls name it."""

    tenant: str
    owner: str
    """The customer (support) or account (supply) every record an action names must belong to."""
    subject_id: str | None
    """The ticket or event id."""
    thread_id: str | None
    requester: str | None
    correlation_id: str | None
    route: str | None


Guard = Callable[[Tx], None]


@dataclass(frozen=True)
class Workflow:
    """One workflow, as the generic approval and execute steps need to know it."""

    run_of: Callable[[Any], RunRef]
    """The run's identity from its state."""
    facts: Callable[..., Any]
    """``facts(ctx, state, tx=None)``: the records its policy engine judges a plan against."""
    allowlist: Callable[[Any, str], frozenset[str]]
    """``allowlist(ctx, route)``: the route's tools, from the workflow's pack."""
    side_effect: Callable[[str], bool]
    """Whether a tool changes a system (its calls get idempotency keys)."""
    guard_for: Callable[[Any, Any, SignedPlan, int, str], Guard | None] | None = None
    """A side effect's last check inside its transaction (support: the refund velocity), or None."""
    hold: Callable[[Any, Any, SignedPlan], None] | None = None
    """``hold(ctx, state, signed)``: record what a plan waiting for approval will do, for other
    runs' rules (support: refunds for the velocity rule; supply: notices and claims)."""
    release: Callable[[Any, Any], None] | None = None
    """``release(ctx, state)``: drop the run's holds when it ends."""
    after_edit: Callable[[ProposedAction], ProposedAction] | None = None
    """Recompute what follows from a reviewer's edit (supply: a substitution's total from its
    lowered qty) before the edited plan is re-signed and decided again."""


# ----------------------------------------------------------------- audit and run index
def audit_run(ctx: GuardedContext, run: RunRef, kind: str, data: dict[str, Any], actor: str = "system") -> None:
    """Append a row to the tenant's hash-chained audit log for this run."""
    ctx.audit.append(run.tenant, kind, actor=actor, data=data,  # type: ignore[arg-type]
                     thread_id=run.thread_id, correlation_id=run.correlation_id)


def record_run(ctx: GuardedContext, run: RunRef, status: str, plan_hash: str | None = None) -> None:
    """Keep the run index (pending approvals, escalations) in step with the run."""
    if run.thread_id:
        ctx.run_index.record(run.thread_id, tenant=run.tenant, status=status, ticket_id=run.subject_id,
                             requester=run.requester, route=run.route, plan_hash=plan_hash)


def correlation_of(config: RunnableConfig | None) -> str | None:
    """The correlation id of the request that (re)started the run, if it gave one."""
    cid = ((config or {}).get("configurable") or {}).get("correlation_id")
    return str(cid) if cid else None


# ----------------------------------------------------------------- the policy decision
def sign(plan: Plan, ctx: GuardedContext) -> SignedPlan:
    """Hash and sign a plan with the run's key (what a reviewer approves, what execute accepts)."""
    return sign_plan(plan, ctx.signing_key)


def decide(judge: Judge, signed: SignedPlan, facts: Any, *, flagged: bool) -> PlanDecision:
    """The one policy evaluation of a signed plan, under the route it was signed for."""
    return judge.evaluate_plan(signed.plan.actions, facts, route=signed.plan.route, injection_flagged=flagged)


def stricter(stored: PlanDecision | None, fresh: PlanDecision) -> tuple[list[str], str]:
    """Per-action decisions and overall: the stricter of a stored verdict (unsigned state) and a
    fresh one, so an edited verdict can neither skip an approval nor a denial."""
    per = stored.per_action if stored is not None else []

    def worst(*ds: str | None) -> str:
        return max((d for d in ds if d is not None), key=lambda x: SEVERITY.get(x, 99), default="deny")

    decisions = [worst(per[i].decision if i < len(per) else "deny", d.decision) for i, d in enumerate(fresh.per_action)]
    overall = worst(stored.overall if stored is not None else "deny", fresh.overall, *decisions)
    return decisions, overall


# ----------------------------------------------------------------- the approval interrupt
def approval_request(state: Any, wf: Workflow) -> dict[str, Any]:
    """The interrupt's value: plan, hash, policy checks and evidence (batch contract)."""
    signed = plan_of(state)
    assert signed is not None, "an approval needs a plan"
    verdict = policy_of(state)
    per = verdict.per_action if verdict is not None else []
    checks = [{"action_index": i, "tool": signed.plan.actions[i].tool, **c.model_dump(mode="json")}
              for i, d in enumerate(per) for c in d.checks]
    return {
        "type": "plan_approval",
        "thread_id": state.get("thread_id"),
        "tenant": signed.plan.tenant,
        "ticket_id": signed.plan.ticket_id,
        "customer_id": signed.plan.customer_id,
        "requester": state.get("requester"),
        "route": state.get("route"),
        "plan": output_actions(state, ["pending_approval"] * len(signed.plan.actions)),
        "plan_hash": signed.hash,
        "policy_version": signed.plan.policy_version,
        "policy_checks": checks,
        "evidence": state.get("evidence") or [],
        # the injection screen's verdict on the run's text, with its spans
        "injection": reviewer_view(state.get("screen")),
        "resume": {"decision": "approve | reject", "plan_hash": signed.hash, "reviewer": "USER_ID", "reason": "TEXT",
                   "edits": "[{index, args}] (optional, only downward)"},
    }


def await_approval(state: Any, config: RunnableConfig | None, ctx: GuardedContext, wf: Workflow,
                   edit_check: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Wait for a valid decision, then approve (possibly an edited, re-decided plan) or reject.

    LangGraph re-runs the node from its first line on every resume, so everything before
    ``interrupt()`` only builds the request from state. ``edit_check(resume, request)`` lets
    a workflow refuse edits its pack does not allow (raise :class:`ApprovalError`).
    """
    request = approval_request(state, wf)
    rules = ctx.policy.approvals
    error: dict[str, str] | None = None
    while True:
        value = interrupt(request if error is None else {**request, "error": error})
        try:
            decision = check_resume(value, request, rules, ctx.role_of)
            if edit_check is not None and decision.edits:
                edit_check(decision, request)
            break
        except ApprovalError as e:
            error = {"code": e.code, "message": e.message}

    # the rest of the run belongs to the request that resumed it: its correlation id
    # tags every later log line and audit row
    cid = correlation_of(config)
    if cid:
        state = {**state, "correlation_id": cid}
    run = wf.run_of(state)
    approval = {
        "decision": decision.decision,
        "reviewer": decision.reviewer,
        "reviewer_role": decision.reviewer_role,
        # False when the resume came straight to the graph (langgraph dev, Studio) naming a
        # reviewer keel's directory does not know; keel's CLI and API always verify
        "reviewer_verified": decision.reviewer_role is not None
        or ctx.role_of(request["tenant"], decision.reviewer) is not None,
        "reason": decision.reason,
        "plan_hash": request["plan_hash"],
        "edited": bool(decision.edits),
        "at": decided_at(),
    }
    if decision.decision == "reject":
        audit_run(ctx, run, "approval", approval, actor=decision.reviewer)
        return {"approval": approval, "status": "rejected", "reason_codes": ["rejected_by_reviewer"],
                "actions": output_actions(state), "correlation_id": state.get("correlation_id")}

    signed = plan_of(state)
    assert signed is not None
    refused = untrusted_key(signed, ctx)
    if refused is not None:  # a plan whose signing key was retired (or is unknown) is not approvable
        audit_run(ctx, run, "approval", {**approval, "decision": "refused", "refused": refused.code,
                                         "detail": str(refused)}, actor=decision.reviewer)
        return {"approval": {**approval, "decision": "refused"}, "actions": output_actions(state),
                "correlation_id": state.get("correlation_id"), **escalation("plan_integrity", refused.code)}
    update: dict[str, Any] = {"status": "running", "correlation_id": state.get("correlation_id")}
    if decision.edits:
        actions = apply_edits(signed.plan.actions, decision.edits)
        if wf.after_edit is not None:
            actions = [wf.after_edit(a) for a in actions]
        edited = Plan.model_validate({**signed.plan.model_dump(), "actions": actions})
        signed = sign(edited, ctx)
        verdict = decide(ctx.policy_engine, signed, wf.facts(ctx, state), flagged=injection_flagged(state))
        update.update(plan=signed, policy=verdict)
        new_state = {**state, **update}
        audit_run(ctx, run, "policy_decision", {"plan_hash": signed.hash, "revalidated_after_edit": True,
                                                **verdict.model_dump(mode="json")}, actor="policy")
        approval["plan_hash"] = signed.hash
        if verdict.overall in ("escalate", "deny"):
            audit_run(ctx, run, "approval", approval, actor=decision.reviewer)
            return {**update, "approval": approval, "actions": output_actions(new_state), **escalation(*verdict.reason_codes)}
    audit_run(ctx, run, "approval", approval, actor=decision.reviewer)
    record_run(ctx, run, "running", plan_hash=approval["plan_hash"])
    return {**update, "approval": approval}


def untrusted_key(signed: SignedPlan, ctx: GuardedContext) -> PlanIntegrityError | None:
    """Why the key that signed ``signed`` is no longer trusted (retired, or not in the ring), or
    None. Other integrity failures are left to :func:`execute_plan`, which refuses them."""
    try:
        verify_plan(signed, ctx.signing_key)
    except PlanIntegrityError as e:
        return e if e.code in UNTRUSTED_KEY else None
    return None


def approved_in_audit(ctx: GuardedContext, state: Any, signed: SignedPlan) -> bool:
    """An approval of exactly this plan: in state, and recorded by the approval step.

    The approval in state is only a checkpoint value; the approval step also writes an
    ``approval`` row to the tenant's hash-chained audit log before the run moves on, so
    an approval forged in the checkpoint store (naming the right hash) is not enough.
    """
    approval = state.get("approval") or {}
    if approval.get("decision") != "approve" or approval.get("plan_hash") != signed.hash:
        return False
    threads = {t for t in (state.get("thread_id"), signed.plan.thread_id) if t}
    return any(
        row.kind == "approval" and row.data.get("decision") == "approve" and row.data.get("plan_hash") == signed.hash
        for t in threads for row in ctx.audit.list(signed.plan.tenant, t)
    )


# ----------------------------------------------------------------- execution, exactly once
def execute_plan(state: Any, ctx: GuardedContext, wf: Workflow) -> dict[str, Any]:
    """Execute every action the policy (and reviewer) allowed, each side effect exactly once."""
    run = wf.run_of(state)
    try:
        signed = verify_plan(state["plan"], ctx.signing_key)
    except (PlanIntegrityError, ValueError) as e:
        # a retired or unknown signing key is named as such (ids only, never key material)
        finer = e.code if isinstance(e, PlanIntegrityError) and e.code != PlanIntegrityError.code else None
        audit_run(ctx, run, "policy_decision", {"refused": "plan_integrity", "detail": str(e)}, actor="executor")
        return {"actions": output_actions(state), **escalation("plan_integrity", *([finer] if finer else []))}
    stored = policy_of(state)
    if stored is None or len(stored.per_action) != len(signed.plan.actions) or (run.tenant, run.owner) != (
            signed.plan.tenant, signed.plan.customer_id):
        return {"actions": output_actions(state), **escalation("plan_integrity")}
    fresh = decide(ctx.policy_engine, signed, wf.facts(ctx, state), flagged=injection_flagged(state))
    decisions, overall = stricter(stored, fresh)
    if overall in ("deny", "escalate") or overall not in SEVERITY:
        audit_run(ctx, run, "policy_decision", {"refused": "plan_not_validated", "plan_hash": signed.hash}, actor="executor")
        return {"actions": output_actions(state), **escalation(*(fresh.reason_codes or ["plan_not_validated"]))}
    if overall == "approve" and not approved_in_audit(ctx, state, signed):
        audit_run(ctx, run, "policy_decision", {"refused": "approval_missing", "plan_hash": signed.hash}, actor="executor")
        return {"actions": output_actions(state), **escalation("approval_missing", *fresh.reason_codes)}

    budget = dict(state.get("budget") or {})
    if state.get("approval"):
        # the wall-clock cap measures the run's own work; days spent waiting for a human
        # are not run time, so the clock restarts when the approved plan executes
        budget["started_at"] = datetime.now(UTC).isoformat()
    results: list[dict[str, Any]] = []
    states: list[str] = []
    n = len(signed.plan.actions)
    for i, action in enumerate(signed.plan.actions):
        if decisions[i] not in ("execute", "approve"):
            states.append("not_run")
            continue
        key = idempotency_key(signed.plan.thread_id or run.thread_id or "", signed.hash, i) \
            if wf.side_effect(action.tool) else None
        call = ToolContext(tenant=run.tenant, customer_id=run.owner, user_id=run.requester or "anonymous",
                           allowlist=wf.allowlist(ctx, run.route or "unknown"), idempotency_key=key,
                           correlation_id=run.correlation_id or "", now=ctx.clock())
        guard = wf.guard_for(ctx, state, signed, i, "approve" if overall == "approve" else "execute") \
            if wf.guard_for is not None else None
        if guard is not None:
            call = call.model_copy(update={"guard": guard})
        res = ctx.tools.call(action.tool, action.args, call)
        budget = charge_tool_call(budget, max(0, res.attempts - 1))
        dry = {"dry_run": True} if getattr(res, "dry_run", False) else {}  # KEEL_ENV=staging: nothing written
        audit_run(ctx, run, "tool_call", {"index": i, "tool": action.tool, "args": action.args, "ok": res.ok,
                                          "error": res.error_code, "replayed": res.replayed, "attempts": res.attempts,
                                          "idempotency_key": key, **dry}, actor="executor")
        if not res.ok:
            if res.error_code in ("transient_failure", "timeout"):
                raise ToolFailure(f"{action.tool}: {res.error_code}")
            states += ["not_run"] * (n - len(states))
            return {"budget": budget, "results": results, "actions": output_actions(state, states),
                    **escalation(res.error_code or "tool_error")}
        results.append({"index": i, "tool": action.tool, "output": res.output, "replayed": res.replayed,
                        "idempotency_key": key, **dry})
        states.append("executed")
        if check(attempt_budget(budget), ctx.caps, datetime.now(UTC)):
            states += ["not_run"] * (n - len(states))
            return {"budget": budget, "results": results, "actions": output_actions(state, states),
                    **escalation("budget_exceeded")}
    return {"budget": budget, "results": results, "actions": output_actions(state, states)}


# ----------------------------------------------------------------- the policy gate and the two ends
def policy_gate(state: Any, ctx: GuardedContext, wf: Workflow) -> dict[str, Any]:
    """POLICY_CHECK: decide the signed plan (:func:`decide`), audit the verdict, and send the
    run on: escalated (deny, escalate), awaiting approval (approve) or on to execute."""
    signed = plan_of(state)
    assert signed is not None, "the policy gate needs a plan"
    run = wf.run_of(state)
    verdict = decide(ctx.policy_engine, signed, wf.facts(ctx, state), flagged=injection_flagged(state))
    update: dict[str, Any] = {"policy": verdict}
    audit_run(ctx, run, "policy_decision", {"plan_hash": signed.hash, "policy_version": ctx.policy.version,
                                            **verdict.model_dump(mode="json")}, actor="policy")
    new_state = {**state, **update}
    if verdict.overall in ("escalate", "deny"):
        return {**update, "actions": output_actions(new_state), **escalation(*verdict.reason_codes)}
    if verdict.overall == "approve":
        states = ["pending_approval" if d.decision in ("approve", "execute") else "not_run" for d in verdict.per_action]
        audit_run(ctx, run, "approval_requested", {"plan_hash": signed.hash})
        if wf.hold is not None:
            wf.hold(ctx, new_state, signed)
        record_run(ctx, run, "awaiting_approval", plan_hash=signed.hash)
        return {**update, "status": "awaiting_approval", "reason_codes": list(verdict.reason_codes),
                "actions": output_actions(new_state, states)}
    return {**update, "actions": output_actions(new_state)}


def finish(state: Any, ctx: GuardedContext, wf: Workflow, *, escalated: bool) -> dict[str, Any]:
    """COMPLETE or ESCALATE_TO_HUMAN: the run's last audit row and its status in the run index."""
    run = wf.run_of(state)
    if escalated:
        status, codes = "escalated", list(state.get("reason_codes") or ["escalated"])
    else:
        status = "rejected" if state.get("status") == "rejected" else "completed"
        codes = list(state.get("reason_codes") or []) if status == "rejected" else []
    summary = {"status": status, "route": state.get("route"), "reason_codes": codes,
               "actions": [{"tool": a["tool"], "decision": a["decision"], "state": a["state"]}
                           for a in state.get("actions") or []]}
    audit_run(ctx, run, "run_finished", summary)
    if wf.release is not None:
        wf.release(ctx, state)
    record_run(ctx, run, status)
    return {"status": status, "reason_codes": codes}
