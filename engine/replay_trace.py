"""Replay a recorded support run under a candidate configuration and say where it decides
differently (``keel replay-trace``).

"Would the stricter refund limit have changed last week's decisions?" is answered by
running last week's tickets again through the real support graph under the candidate,
with every answer from outside the graph taken from the run's recording
(:mod:`engine.recordings`): the model gateway answers only what was recorded for the same
task and input (no model is called; a question the original never asked makes the replay
say it *diverged* there), the tools return the recorded result of the same call and never
act (a side effect the original did not make returns the tool's dry-run preview, marked
as such), the store reads and the refund history are the recorded ones, and the run clock
is the original run's. The replay runs on a fresh thread with an in-memory checkpointer,
audit trail and run index, so it leaves nothing in keel's stores either.

The decisions compared: the route, the escalation reasons, each action's policy verdict
with its reason codes, and the outcome. An approval the policy asks for ends the replay
(the candidate's decision is "approve", a person decides next), and so an original run
the policy sent to a person is compared at that point too, whatever the person did then.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from typing import Any

from langgraph.checkpoint.memory import InMemorySaver

from engine.candidates import Candidate, candidate_context, candidate_routing
from engine.checkpoints import serializer
from engine.recordings import (Recording, model_input_digest, prompts_digest, read_input_digest,
                               tool_input_digest)
from engine.runtime import Runtime
from gateway.base import ModelError, PlanningInput
from gateway.gateway import CallHook
from gateway.routing import GATEWAY_TASK, RoutingTable
from graphs.context import SupportContext
from graphs.support import build_support_graph
from guards.policy import PlanDecision
from keel.errors import InvalidInput
from keel.types import Extraction, PlanProposal, Route, Ticket, TriageResult
from tools.registry import TOOLS, preview_actions
from tools.runner import ToolContext, ToolResult

__all__ = [
    "ReplayError",
    "ActionVerdict",
    "Decisions",
    "Difference",
    "ReplayResult",
    "ReplaySummary",
    "replay_run",
    "replay_since",
    "DIFFERENCE_KINDS",
]

DIFFERENCE_KINDS = ("route", "escalation", "action", "verdict", "outcome", "diverged")
"""``route``: another specialist; ``escalation``: other reasons to escalate; ``action``: the
plan's action at that index differs (tool or arguments); ``verdict``: the policy decided
that action differently; ``outcome``: the run ends otherwise; ``diverged``: the replay
needed an answer the recording does not hold (a model task asked with other input)."""


class ReplayError(InvalidInput, ValueError):
    """A run that cannot be replayed: no such thread, no recording, no checkpoint."""

    code = "replay_error"


class NoRecordedAnswer(ModelError):
    """The replay asked the model something the original run did not (it diverged). A model
    error to the node that asked, as a live model that cannot answer would be."""

    code = "replay_diverged"


class RecordedModelFailure(ModelError):
    """The original run's model call failed here: the replay fails it the same way."""


# ------------------------------------------------------------------ results
@dataclass(frozen=True, slots=True)
class ActionVerdict:
    """One action of the plan and the policy's verdict on it."""

    index: int
    tool: str
    args: dict[str, Any]
    decision: str | None
    reason_codes: tuple[str, ...] = ()

    def label(self) -> str:
        return f"{self.decision or '-'}" + (f" [{', '.join(self.reason_codes)}]" if self.reason_codes else "")


@dataclass(frozen=True, slots=True)
class Decisions:
    """What a run decided: route, escalation reasons, the policy's verdicts and the outcome.

    ``outcome`` is the status, except that a run whose plan the policy sent for approval
    ends there (``awaiting_approval``) whatever the reviewer did; ``status`` is the status
    the run really ended with."""

    route: str | None
    outcome: str | None
    status: str | None
    escalation_reasons: tuple[str, ...]
    policy_overall: str | None
    policy_version: str | None
    actions: tuple[ActionVerdict, ...]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "actions": [dataclasses.asdict(a) for a in self.actions]}


@dataclass(frozen=True, slots=True)
class Difference:
    """One decision the candidate takes otherwise."""

    kind: str
    """One of :data:`DIFFERENCE_KINDS`."""
    subject: str
    """What differs: ``route``, ``action 0 issue_refund``, ``model plan`` …"""
    original: str
    candidate: str


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """One replayed run: the original's decisions, the candidate's, and where they differ."""

    thread_id: str
    run_id: str | None
    tenant: str
    candidate: str
    original: Decisions
    replayed: Decisions
    differences: tuple[Difference, ...]
    changed: bool
    """Some decision differs (a divergence counts: the candidate takes another path)."""
    diverged: bool
    """The candidate needed an answer the recording does not hold; decisions after that
    point are unknown and not compared."""
    dry_run: tuple[str, ...] = ()
    """Side effects the candidate would make that the original did not (previewed, never made)."""
    notes: tuple[str, ...] = ()
    """What the replay could not take from the recording (a store read made live, say)."""

    @property
    def diffs(self) -> tuple[Difference, ...]:
        """Alias of :attr:`differences`."""
        return self.differences

    def to_json(self) -> dict[str, Any]:
        return {"thread_id": self.thread_id, "run_id": self.run_id, "tenant": self.tenant,
                "candidate": self.candidate, "changed": self.changed, "diverged": self.diverged,
                "original": self.original.to_json(), "replayed": self.replayed.to_json(),
                "differences": [dataclasses.asdict(d) for d in self.differences],
                "dry_run": list(self.dry_run), "notes": list(self.notes)}


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """Many replayed runs: how many changed, stayed the same or could not be replayed."""

    since: datetime
    candidate: str
    total: int
    changed: int
    same: int
    diverged: int
    """Of ``changed``: those that diverged."""
    failed: int
    by_kind: dict[str, int]
    """Runs with at least one difference of each kind."""
    results: tuple[ReplayResult, ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    """``(thread_id, why)`` of each run that could not be replayed."""

    def to_json(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "candidate": self.candidate, "total": self.total,
                "changed": self.changed, "same": self.same, "diverged": self.diverged, "failed": self.failed,
                "by_kind": dict(self.by_kind), "results": [r.to_json() for r in self.results],
                "failures": [{"thread_id": t, "error": e} for t, e in self.failures]}


# ------------------------------------------------------------------ the recording, as answers
class _Answers:
    """A thread's recording as queues of answers by (kind, name, input digest): a question
    asked again gets the next recorded answer, and the last one once they are used up."""

    def __init__(self, rows: Sequence[Recording]) -> None:
        self._queues: dict[tuple[str, str, str], deque[Recording]] = defaultdict(deque)
        self._last: dict[tuple[str, str, str], Recording] = {}
        for r in rows:
            self._queues[(r.kind, r.name, r.input_digest)].append(r)
        clocks = [r.output for r in rows if r.kind == "clock"]
        self.clock: datetime | None = datetime.fromisoformat(clocks[0]) if clocks else None

    def take(self, kind: str, name: str, key: str) -> Recording | None:
        q = self._queues.get((kind, name, key))
        if q:
            self._last[(kind, name, key)] = row = q.popleft()
            return row
        return self._last.get((kind, name, key))


@dataclass
class _Log:
    diverged: list[Difference] = field(default_factory=list)
    dry_run: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


class _ReplayGateway:
    """Model answers from the recording only; never a model call."""

    def __init__(self, answers: _Answers, log: _Log, routing: RoutingTable | None, prompts: str | None) -> None:
        self.answers, self.log, self.routing, self.prompts = answers, log, routing, prompts

    def _answer(self, task: str, key: str, schema: type, risk: str = "low") -> Any:
        row = self.answers.take("model", task, key)
        if row is None:
            return self._diverge(task, "no recorded answer")
        if self.prompts is not None and not str(row.meta.get("prompts") or prompts_digest(task)).startswith(self.prompts):
            return self._diverge(task, f"no recorded answer under prompts {self.prompts}")
        model = row.meta.get("model")
        if self.routing is not None and model:
            chosen = self.routing.select(GATEWAY_TASK[task], risk=risk).chain[0]  # type: ignore[arg-type]
            if chosen != model:
                return self._diverge(task, f"no recorded answer from model {chosen} (recorded: {model})")
        if isinstance(row.output, dict) and set(row.output) == {"error"}:
            raise RecordedModelFailure(row.output["error"])
        return schema.model_validate(row.output)

    def _diverge(self, task: str, why: str) -> Any:
        self.log.diverged.append(Difference("diverged", f"model {task}", "recorded answer", why))
        raise NoRecordedAnswer(f"{task}: {why}")

    def triage(self, ticket: Ticket, *, on_call: CallHook | None = None) -> TriageResult:
        return self._answer("triage", model_input_digest("triage", ticket), TriageResult)

    def extract(self, ticket: Ticket, route: Route, *, on_call: CallHook | None = None) -> Extraction:
        return self._answer("extract", model_input_digest("extract", ticket, route), Extraction)

    def plan(self, planning: PlanningInput, *, on_call: CallHook | None = None) -> PlanProposal:
        card = next((c for c in planning.tools if c.operation == planning.extraction.operation), None)
        risk = "high" if card is not None and card.side_effect else "low"
        return self._answer("plan", model_input_digest("plan", planning), PlanProposal, risk)


class _ReplayTools:
    """Tool results from the recording; a side effect is never made (one the original did
    not make returns its dry-run preview), and a read not recorded is not made either."""

    def __init__(self, answers: _Answers, log: _Log, backoffice: Any) -> None:
        self.answers, self.log, self.backoffice = answers, log, backoffice

    def call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        spec = TOOLS.get(name)
        if spec is None:
            return ToolResult(ok=False, error_code="unknown_tool", error="unknown tool")
        if name not in ctx.allowlist:
            return ToolResult(ok=False, error_code="tool_not_allowed", error=f"tool {name} is not allowed for this step")
        row = self.answers.take("tool", name, tool_input_digest(name, args))
        if row is not None:
            return ToolResult.model_validate(row.output)
        if spec.side_effect:
            preview = preview_actions(self.backoffice, ctx.tenant, [{"tool": name, "args": dict(args)}])[0]
            self.log.dry_run.append(f"{name} {dict(args)}")
            return ToolResult(ok=True, output={"dry_run": True, "changes": preview.get("changes", []),
                                               **({"error": preview["error"]} if "error" in preview else {})},
                              attempts=0)
        self.log.note(f"tool {name}: no recorded result for these arguments (not called)")
        return ToolResult(ok=False, error_code="not_recorded", error=f"no recorded result of {name} for these arguments")


class _ReplayReads:
    """Back-office reads from the recording; one not recorded is read live (a read has no
    side effect) and noted, since today's record may differ from the original's."""

    def __init__(self, answers: _Answers, log: _Log, live: Any) -> None:
        self.answers, self.log, self.live = answers, log, live

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.live, name)
        if not callable(attr) or not name.startswith(("get_", "list_")):
            return attr

        def read(*args: Any, **kwargs: Any) -> Any:
            row = None if kwargs else self.answers.take("read", name, read_input_digest(name, args))
            if row is not None:
                return row.output
            self.log.note(f"read {name}: not recorded, read live")
            return attr(*args, **kwargs)

        return read


class _ReplayRefunds:
    """The refund history the original saw; holds and locks are not taken."""

    def __init__(self, answers: _Answers, log: _Log, live: Any, original_thread: str) -> None:
        self.answers, self.log, self.live, self.original_thread = answers, log, live, original_thread

    def recent(self, tenant: str, customer_id: str, since: datetime, *, exclude_thread: str = "",
               exclude_keys: Sequence[str] = (), tx: Any = None) -> list[dict[str, Any]]:
        row = self.answers.take("refunds", "recent", read_input_digest("recent", [tenant, customer_id]))
        if row is not None:
            recorded_since = (row.input or {}).get("since")
            if recorded_since and since < datetime.fromisoformat(recorded_since):
                self.log.note("refund history: the candidate's velocity period reaches before the recorded one")
            return list(row.output)
        self.log.note("refund history: not recorded, read live (the original run's own refunds left out)")
        return self.live.recent(tenant, customer_id, since, exclude_thread=self.original_thread)

    def hold(self, *args: Any, **kwargs: Any) -> None:
        return None

    def lock(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class _Row:
    kind: str
    data: dict[str, Any]
    thread_id: str | None
    actor: str


class _MemoryAudit:
    """The replay's audit trail: kept in memory, never in the tenant's chain."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []

    def append(self, tenant: str, kind: str, *, actor: str, data: dict[str, Any] | None = None,
               thread_id: str | None = None, correlation_id: str | None = None, at: datetime | None = None) -> _Row:
        row = _Row(kind, dict(data or {}), thread_id, actor)
        self.rows.append(row)
        return row

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[_Row]:
        rows = [r for r in self.rows if thread_id is None or r.thread_id == thread_id]
        return rows[offset:offset + limit]


class _NoIndex:
    def record(self, thread_id: str, **kwargs: Any) -> None:
        return None


class _NoQuota:
    def remaining(self, tenant: str, now: datetime, user: str | None = None) -> int:
        return 1 << 62

    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False,
               user: str | None = None) -> bool:
        return True


# ------------------------------------------------------------------ decisions
def _policy(state: Mapping[str, Any]) -> PlanDecision | None:
    raw = state.get("policy")
    if raw is None:
        return None
    return raw if isinstance(raw, PlanDecision) else PlanDecision.model_validate(raw)


def _decisions(state: Mapping[str, Any], *, dry_run: bool = False) -> Decisions:
    policy = _policy(state)
    status = state.get("status")
    verdicts = list(policy.per_action) if policy is not None else []
    actions = []
    for i, a in enumerate(state.get("actions") or []):
        v = verdicts[i] if i < len(verdicts) else None
        actions.append(ActionVerdict(index=i, tool=str(a.get("tool")), args=dict(a.get("args") or {}),
                                     decision=v.decision if v is not None else a.get("decision"),
                                     reason_codes=tuple(v.reason_codes) if v is not None else ()))
    outcome = status
    if policy is not None and policy.overall == "approve" and status in ("awaiting_approval", "completed", "rejected"):
        outcome = "awaiting_approval"
    elif dry_run and status not in ("escalated",):
        outcome = "completed (dry run)"
    return Decisions(
        route=state.get("route"), outcome=outcome, status=status,
        escalation_reasons=tuple(state.get("reason_codes") or ()) if status == "escalated" else (),
        policy_overall=policy.overall if policy is not None else None,
        policy_version=policy.policy_version if policy is not None else None,
        actions=tuple(actions),
    )


def _compare(a: Decisions, b: Decisions) -> list[Difference]:
    out: list[Difference] = []
    if a.route != b.route:
        out.append(Difference("route", "route", str(a.route), str(b.route)))
    for i in range(max(len(a.actions), len(b.actions))):
        x = a.actions[i] if i < len(a.actions) else None
        y = b.actions[i] if i < len(b.actions) else None
        subject = f"action {i} {(x or y).tool}"  # type: ignore[union-attr]
        if x is None or y is None or (x.tool, x.args) != (y.tool, y.args):
            out.append(Difference("action", f"action {i}", _action(x), _action(y)))
        elif (x.decision, x.reason_codes) != (y.decision, y.reason_codes):
            out.append(Difference("verdict", subject, x.label(), y.label()))
    if a.escalation_reasons != b.escalation_reasons:
        out.append(Difference("escalation", "escalation reasons", ", ".join(a.escalation_reasons) or "-",
                              ", ".join(b.escalation_reasons) or "-"))
    if a.outcome != b.outcome:
        out.append(Difference("outcome", "outcome", str(a.outcome), str(b.outcome)))
    return out


def _action(a: ActionVerdict | None) -> str:
    if a is None:
        return "-"
    args = ", ".join(f"{k}={v}" for k, v in sorted(a.args.items()))
    return f"{a.tool}({args}) {a.label()}"


# ------------------------------------------------------------------ replaying
_GRAPH: list[Any] = []
_GRAPH_LOCK = threading.Lock()


def _replay_graph() -> Any:
    """The support graph on an in-memory checkpointer, compiled once per process (each
    replay runs on a thread of its own and deletes it when done)."""
    with _GRAPH_LOCK:
        if not _GRAPH:
            _GRAPH.append(build_support_graph().compile(checkpointer=InMemorySaver(serde=serializer())))
        return _GRAPH[0]


def _original_state(rt: Runtime, thread_id: str) -> dict[str, Any]:
    snap = rt.graph("support").get_state({"configurable": {"thread_id": thread_id}})
    values = dict(getattr(snap, "values", None) or {})
    if not values.get("ticket"):
        raise ReplayError(f"thread {thread_id}: no checkpointed support run")
    return values


def _ticket_input(state: Mapping[str, Any]) -> dict[str, Any]:
    t = state["ticket"]
    return t.model_dump(mode="json") if hasattr(t, "model_dump") else dict(t)


def _replay_context(rt: Runtime, candidate: Candidate, answers: _Answers, log: _Log,
                   original_thread: str) -> SupportContext:
    """The candidate's context for a replay: recorded answers, no store written."""
    base = rt.support_context()
    live_reads = rt.backoffice
    recorded = answers.clock
    fallback: list[datetime] = []

    def clock() -> datetime:
        """The original run's clock (its first reading); the runtime's, noted, if none was recorded."""
        if recorded is not None:
            return recorded if recorded.tzinfo else recorded.replace(tzinfo=UTC)
        if not fallback:
            log.note("run clock: not recorded, the runtime's clock used")
            fallback.append(rt.now())
        return fallback[0]

    replay_base = dataclasses.replace(
        base,
        tools=_ReplayTools(answers, log, live_reads),
        backoffice=_ReplayReads(answers, log, live_reads),
        refunds=_ReplayRefunds(answers, log, rt.refunds, original_thread),
        audit=_MemoryAudit(),
        run_index=_NoIndex(),
        quotas=_NoQuota(),
        clock=clock,
    )
    writers = {f.name for f in dataclasses.fields(SupportContext)} & {"memory"}
    if writers:  # long-term memory is written by the run's last node: a replay remembers nothing
        replay_base = dataclasses.replace(replay_base, **{name: None for name in writers})
    ctx = candidate_context(rt, candidate, base=replay_base)
    gateway = _ReplayGateway(answers, log, candidate_routing(candidate), candidate.prompts_version)
    return dataclasses.replace(ctx, gateway=gateway)


def replay_run(rt: Runtime, thread_id: str, candidate: Candidate, *, run_id: str | None = None) -> ReplayResult:
    """Replay thread ``thread_id``'s recorded runs (``run_id``: up to the end of that run)
    under ``candidate``; raises :class:`ReplayError` for a thread without a recording or a
    checkpoint. Calls no model, makes no side effect, writes nothing to keel's stores."""
    rows = rt.recordings.thread(thread_id)
    if run_id is not None:  # that run and the runs of the thread before it (a resume's triage was its start's)
        own = [r.at for r in rows if r.run_id == run_id]
        rows = [r for r in rows if own and r.at <= max(own)]
    if not rows:
        raise ReplayError(f"thread {thread_id}: no recorded run" + (f" {run_id}" if run_id else ""))
    original_state = _original_state(rt, thread_id)
    answers, log = _Answers(rows), _Log()
    ctx = _replay_context(rt, candidate, answers, log, thread_id)
    graph = _replay_graph()
    cfg = {"configurable": {"thread_id": f"replay-{uuid.uuid4().hex[:12]}",
                            "requester": original_state.get("requester") or "replay",
                            "correlation_id": original_state.get("correlation_id") or ""}}
    try:
        graph.invoke({"ticket": _ticket_input(original_state)}, cfg, context=ctx, interrupt_before=["verify"])
        snap = graph.get_state(cfg)
        if "verify" in (snap.next or ()) and not log.dry_run:
            graph.invoke(None, cfg, context=ctx)  # VERIFY of recorded side effects, on the recorded reads
            snap = graph.get_state(cfg)
        replayed = _decisions(snap.values, dry_run=bool(log.dry_run))
    finally:
        graph.checkpointer.delete_thread(cfg["configurable"]["thread_id"])
    original = _decisions(original_state)
    diffs = tuple(log.diverged) if log.diverged else tuple(_compare(original, replayed))
    return ReplayResult(
        thread_id=thread_id, run_id=run_id or rows[0].run_id, tenant=next((r.tenant for r in rows if r.tenant), ""),
        candidate=candidate.name, original=original, replayed=replayed, differences=diffs,
        changed=bool(diffs), diverged=bool(log.diverged), dry_run=tuple(log.dry_run), notes=tuple(log.notes),
    )


def replay_since(rt: Runtime, since: datetime, candidate: Candidate, *, tenant: str | None = None,
                 limit: int = 100) -> ReplaySummary:
    """Replay every run recorded from ``since`` on (``tenant``'s only; at most ``limit``,
    oldest first) under ``candidate`` and summarise; a run that cannot be replayed is
    counted as failed with its reason, never stops the others."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    results: list[ReplayResult] = []
    failures: list[tuple[str, str]] = []
    for _tenant, thread in rt.recordings.threads_since(since, tenant=tenant, limit=limit):
        try:
            results.append(replay_run(rt, thread, candidate))
        except Exception as e:  # noqa: BLE001 - one run that cannot be replayed is reported, never fatal
            failures.append((thread, f"{type(e).__name__}: {e}"[:300]))
    return _summary(since, candidate, results, failures)


def _summary(since: datetime, candidate: Candidate, results: Iterable[ReplayResult],
             failures: Sequence[tuple[str, str]]) -> ReplaySummary:
    results = tuple(results)
    kinds: Counter[str] = Counter()
    for r in results:
        kinds.update({d.kind for d in r.differences})
    changed = sum(r.changed for r in results)
    return ReplaySummary(since=since, candidate=candidate.name, total=len(results) + len(failures), changed=changed,
                         same=len(results) - changed, diverged=sum(r.diverged for r in results),
                         failed=len(failures), by_kind=dict(sorted(kinds.items())), results=results,
                         failures=tuple(failures))
