"""What the support graph's nodes may use besides the state: :class:`SupportContext`.

Nodes get their dependencies through LangGraph's runtime context, not from a process-wide
object: the graph is declared with ``StateGraph(..., context_schema=SupportContext)``,
each node takes ``runtime: langgraph.runtime.Runtime[SupportContext]``, and whoever runs
the graph passes ``context=`` (``engine.runtime.Runtime.context()`` builds it from the
process's stores and settings). Each field is typed by the narrowest protocol the nodes
use, so a node cannot reach a database, a settings object or another tenant's store
except through one of these, and a test can hand a node exactly what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.base import PlanningInput
from gateway.gateway import CallHook
from guards.budgets import RunCaps
from guards.memory_policy import MemoryProposal, MemoryVerdict
from guards.pack import PolicyPack
from guards.policy import PlanDecision, PolicyFacts
from keel.audit import AuditKind, AuditRow
from keel.db import Tx
from keel.errors import ConfigError
from keel.plan import PlanKeys
from keel.types import Extraction, PlanProposal, ProposedAction, Route, Ticket, TriageResult
from tools.runner import ToolContext, ToolResult

__all__ = [
    "SupportContext",
    "MissingContext",
    "ModelCalls",
    "ToolCalls",
    "PlanJudge",
    "BackOfficeReads",
    "RefundLedger",
    "AuditTrail",
    "RunIndex",
    "TokenQuota",
    "RoleLookup",
    "Clock",
    "CustomerMemoryDesk",
    "Remembers",
    "Audits",
    "IndexesRuns",
    "AsksModels",
    "ReadsPack",
    "ScopesTools",
    "DecidesPlans",
    "TriageDeps",
    "RetrieveDeps",
    "ProposeDeps",
    "PolicyCheckDeps",
    "FinishDeps",
    "VerifyDeps",
    "protocol_fields",
]


class ModelCalls(Protocol):
    """The model gateway's three tasks (``gateway.ModelGateway``): validated output or an error."""

    def triage(self, ticket: Ticket, *, on_call: CallHook | None = None) -> TriageResult: ...

    def extract(self, ticket: Ticket, route: Route, *, on_call: CallHook | None = None) -> Extraction: ...

    def plan(self, planning: PlanningInput, *, on_call: CallHook | None = None) -> PlanProposal: ...


class ToolCalls(Protocol):
    """The one door to the back office's tools (``tools.runner.ToolRunner``)."""

    def call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult: ...


class PlanJudge(Protocol):
    """The policy engine (``guards.policy.PolicyEngine``): decides a plan, pure."""

    def evaluate_plan(self, actions: Sequence[ProposedAction], facts: PolicyFacts, route: Route | None,
                      injection_flagged: bool = False) -> PlanDecision: ...


class BackOfficeReads(Protocol):
    """Store reads that are not tool calls (``tools.backoffice.BackOffice``): the records the
    policy judges a plan against, and VERIFY's re-reads after a side effect."""

    def get_customer(self, tenant: str, customer_id: str) -> dict[str, Any] | None: ...

    def get_order(self, tenant: str, order_id: str) -> dict[str, Any] | None: ...

    def get_subscription(self, tenant: str, subscription_id: str) -> dict[str, Any] | None: ...

    def list_orders(self, tenant: str, customer_id: str) -> list[dict[str, Any]]: ...

    def list_subscriptions(self, tenant: str, customer_id: str) -> list[dict[str, Any]]: ...

    def list_reships(self, tenant: str, order_id: str) -> list[dict[str, Any]]: ...

    def list_password_resets(self, tenant: str, customer_id: str) -> list[dict[str, Any]]: ...


class RefundLedger(Protocol):
    """keel's own refunds of a customer (``tools.refund_history.RefundHistory``): the refund
    velocity facts, the hold of a plan waiting for approval, the per-customer lock."""

    def recent(self, tenant: str, customer_id: str, since: datetime, *, exclude_thread: str = "",
               exclude_keys: Sequence[str] = (), tx: Tx | None = None) -> list[dict[str, Any]]: ...

    def hold(self, tenant: str, thread_id: str, plan_hash: str, customer_id: str,
             refunds: Iterable[tuple[int, str, int]], now: datetime) -> None: ...

    def lock(self, tx: Tx, tenant: str, customer_id: str) -> None: ...


class AuditTrail(Protocol):
    """The hash-chained audit log (``keel.audit.AuditLog``): append a row, read a thread's."""

    def append(self, tenant: str, kind: AuditKind, *, actor: str, data: dict[str, Any] | None = None,
               thread_id: str | None = None, correlation_id: str | None = None,
               at: datetime | None = None) -> AuditRow: ...

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[AuditRow]: ...


class RunIndex(Protocol):
    """Run status by tenant (``keel.threads.ThreadIndex``): pending approvals, escalations."""

    def record(self, thread_id: str, *, tenant: str, status: str, ticket_id: str | None = None,
               requester: str | None = None, route: str | None = None, plan_hash: str | None = None) -> None: ...


class TokenQuota(Protocol):
    """The daily model-token quotas of tenants and users (``guards.budgets.TenantTokenBudget``)."""

    def remaining(self, tenant: str, now: datetime, user: str | None = None) -> int: ...

    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False,
               user: str | None = None) -> bool: ...


class CustomerMemoryDesk(Protocol):
    """Long-term memory per customer (``engine.memory.CustomerMemory``): the agent proposes,
    the memory rule (``guards.memory_policy``) accepts or rejects, every decision is audited."""

    def propose(self, tenant: str, customer_id: str, thread_id: str, proposals: Sequence[MemoryProposal], *,
                correlation_id: str | None = None, now: datetime | None = None) -> list[MemoryVerdict]: ...


RoleLookup = Callable[[str, str], "str | None"]
"""``role_of(tenant, user)``: the user's role in keel's directory, or None if unknown."""

Clock = Callable[[], datetime]
"""A clock: returns the current time, timezone-aware."""


# --------------------------------------------------------------------------- what each node may use
# LangGraph hands every node the run's one SupportContext. Each node declares the part it
# uses as a read-only protocol (``runtime: Runtime[TriageDeps]``); SupportContext satisfies
# them all structurally, and a node's unit test runs it on a fake holding only those
# fields (``tests/test_nodes_*.py``), so a node that reaches for more fails its tests.


class Audits(Protocol):
    """Writes audit rows (every node)."""

    @property
    def audit(self) -> AuditTrail: ...


class IndexesRuns(Protocol):
    """Keeps the run index in step with the run's status."""

    @property
    def run_index(self) -> RunIndex: ...


class AsksModels(Audits, Protocol):
    """Asks the model gateway, auditing each call and charging the token quotas."""

    @property
    def gateway(self) -> ModelCalls: ...

    @property
    def quotas(self) -> TokenQuota: ...

    @property
    def quota_clock(self) -> Clock: ...


class ReadsPack(Protocol):
    """Reads the policy pack in force (allowlists, thresholds, version)."""

    @property
    def policy(self) -> PolicyPack: ...


class ScopesTools(ReadsPack, Protocol):
    """Builds the tool runner's view of a run (the route's allowlist, the run clock)."""

    @property
    def clock(self) -> Clock: ...


class TriageDeps(AsksModels, IndexesRuns, ReadsPack, Protocol):
    """TRIAGE: the router model and the pack's confidence threshold."""


class RetrieveDeps(AsksModels, ScopesTools, Protocol):
    """RETRIEVE_CONTEXT: the extraction model, allowlisted reads, the policy's store reads, caps."""

    @property
    def tools(self) -> ToolCalls: ...

    @property
    def backoffice(self) -> BackOfficeReads: ...

    @property
    def caps(self) -> RunCaps: ...


class ProposeDeps(AsksModels, ReadsPack, Protocol):
    """PROPOSE_ACTION: the planner model, the route's allowlist and pack version, the signing key."""

    @property
    def signing_key(self) -> bytes | PlanKeys: ...


class DecidesPlans(ReadsPack, Protocol):
    """Decides a signed plan against the run's records, clock and keel's other refunds."""

    @property
    def policy_engine(self) -> PlanJudge: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def refunds(self) -> RefundLedger: ...


class PolicyCheckDeps(DecidesPlans, Audits, IndexesRuns, Protocol):
    """POLICY_CHECK: the verdict, the approval hold of the plan's refunds, the run index."""


class Remembers(Protocol):
    """Proposes long-term memory items about the run's customer (None: no memory kept)."""

    @property
    def memory(self) -> CustomerMemoryDesk | None: ...


class FinishDeps(Audits, IndexesRuns, Remembers, Protocol):
    """COMPLETE and ESCALATE_TO_HUMAN: the last audit row and run-index entry, the memory proposals."""


class VerifyDeps(Audits, Protocol):
    """VERIFY: store re-reads of the changed records."""

    @property
    def backoffice(self) -> BackOfficeReads: ...


def protocol_fields(proto: type) -> frozenset[str]:
    """The fields a node-dependency protocol names (its properties, inherited ones too)."""
    return frozenset(name for klass in proto.__mro__ if klass is not Protocol and klass is not object
                     for name, value in vars(klass).items() if isinstance(value, property))


@dataclass(frozen=True, slots=True)
class SupportContext:
    """Everything a support node may use besides its state, for one run (read-only)."""

    policy: PolicyPack
    """The policy pack in force: route allowlists, router threshold, refund velocity, approval rules."""
    policy_engine: PlanJudge
    """Decides a plan under :attr:`policy`."""
    caps: RunCaps
    """Per-run caps (tool calls, wall clock, retries) from the pack."""
    gateway: ModelCalls
    """The model gateway."""
    tools: ToolCalls
    """The tool runner: allowlist, authorization, idempotency, rate limit, timeout, retries."""
    backoffice: BackOfficeReads
    """Store reads outside the tool runner (policy facts, verification)."""
    refunds: RefundLedger
    """keel's refunds of a customer, for the velocity rule."""
    audit: AuditTrail
    """The tenant's hash-chained audit log."""
    run_index: RunIndex
    """Run status by tenant."""
    quotas: TokenQuota
    """Daily model-token quotas of the tenant and the requester."""
    role_of: RoleLookup
    """A reviewer's role in keel's directory (None: unknown user)."""
    clock: Clock
    """The run clock (``KEEL_NOW``; the demo data's day on the embedded demo): refund windows,
    record timestamps, velocity periods."""
    quota_clock: Clock
    """The quotas' clock (``KEEL_NOW`` or the wall clock, never the demo's frozen day, so a
    spent day resets)."""
    signing_key: bytes | PlanKeys = field(repr=False)
    """The HMAC key plans are signed with, or keel's keyring (:mod:`keel.keys`; never shown in
    a repr or a log line)."""
    memory: CustomerMemoryDesk | None = None
    """Long-term memory per customer (``engine.memory``); None: the run remembers nothing."""


class MissingContext(ConfigError, TypeError):
    """The support graph was run without ``context=SupportContext(...)``."""
