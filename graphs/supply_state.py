"""State and run context of the supply-chain exceptions workflow (:mod:`graphs.supply`).

The contract between the supply graph's builder and its nodes, like :mod:`graphs.state`
and :mod:`graphs.context` are for support. The run context holds only what the nodes may
use; the parts keel's guarantees need (pack, engine, caps, tool runner, audit, run index,
reviewer directory, clock, signing key) carry the same names as in ``SupportContext``, so
the building blocks of :mod:`nodes.blocks` take either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from typing_extensions import TypedDict

from graphs.context import AuditTrail, Clock, RoleLookup, RunIndex, ToolCalls
from guards.budgets import RunCaps
from guards.supply_pack import SupplyPack
from guards.supply_policy import SupplyPolicyEngine
from keel.plan import PlanKeys

__all__ = ["SupplyInput", "SupplyState", "SupplyContext", "SupplyRecords"]


class SupplyInput(TypedDict):
    """What a caller sends: ``{"event": EVENT}`` (``workflows/supply/events.jsonl`` lines)."""

    event: dict[str, Any]


class SupplyState(TypedDict, total=False):
    """The whole run, checkpointed after every node (the keys support's batch output reads
    have the same names and meaning)."""

    event: dict[str, Any]
    """The validated event (``gateway.supply_rules.SupplyEvent`` as JSON)."""
    thread_id: str
    requester: str
    correlation_id: str
    triage: dict[str, Any]
    screen: Any
    """The injection screen of the event (``guards.injection.ScreenResult``)."""
    context: dict[str, Any]
    """The records the planner may see (``SupplyFacts`` as JSON: the account's own shipments and POs)."""
    evidence: list[dict[str, Any]]
    plan: Any
    """The signed plan (``keel.plan.SignedPlan``)."""
    policy: Any
    """The policy verdict (``guards.policy.PlanDecision``)."""
    approval: dict[str, Any] | None
    results: list[dict[str, Any]]
    verification: dict[str, Any] | None
    budget: dict[str, Any]
    route: str
    """delay | stock | claims | unknown."""
    confidence: float
    status: str
    actions: list[dict[str, Any]]
    reason_codes: list[str]
    answer: str | None
    citations: list[str]


class SupplyRecords(Protocol):
    """Store reads outside the tool runner (``tools.supply.SupplyStore``): the tenant's records
    the policy judges a plan against, and VERIFY's re-reads."""

    def get(self, tenant: str, kind: str, rid: str) -> dict[str, Any] | None: ...

    def all(self, tenant: str, kind: str) -> list[dict[str, Any]]: ...

    def hold(self, tenant: str, thread_id: str, plan_hash: str, items: list[dict[str, Any]]) -> None: ...

    def release(self, tenant: str, thread_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SupplyContext:
    """Everything a supply node may use besides its state, for one run (read-only)."""

    policy: SupplyPack
    policy_engine: SupplyPolicyEngine
    caps: RunCaps
    tools: ToolCalls
    """A tool runner over the supply tools (``ToolRunner(store, registry=SUPPLY_TOOLS)``)."""
    records: SupplyRecords
    audit: AuditTrail
    run_index: RunIndex
    role_of: RoleLookup
    clock: Clock
    signing_key: bytes | PlanKeys = field(repr=False)
