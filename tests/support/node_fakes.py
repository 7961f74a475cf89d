"""Fake dependencies for the support nodes' unit tests: no database, no gateway, no tools.

Each node test builds a context holding only the fields that node may use
(:func:`context`), so a node that reaches for anything else fails with AttributeError;
the fakes record what they were asked so the tests can assert on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from langgraph.runtime import Runtime

from gateway.base import GatewayCall, PlanningInput
from graphs.context import protocol_fields
from guards.budgets import RunCaps
from guards.pack import load_policy
from guards.policy import PolicyEngine
from keel.types import Extraction, PlanProposal, Route, Ticket, TriageResult
from tools.registry import cards
from tools.runner import ToolContext, ToolResult

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PACK = load_policy()
KEY = b"unit-test-key"

TICKET = {"id": "T-1", "tenant": "acme", "customer_id": "C-1", "channel": "email", "subject": "Refund",
          "body": "Please refund order O-1."}


class FakeAudit:
    """Records every row appended; ``list`` returns them as rows with ``kind`` and ``data``."""

    def __init__(self) -> None:
        self.rows: list[SimpleNamespace] = []

    def append(self, tenant: str, kind: str, *, actor: str, data: dict[str, Any] | None = None,
               thread_id: str | None = None, correlation_id: str | None = None, at: datetime | None = None) -> Any:
        row = SimpleNamespace(tenant=tenant, kind=kind, actor=actor, data=data or {}, thread_id=thread_id,
                              correlation_id=correlation_id)
        self.rows.append(row)
        return row

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[Any]:
        return [r for r in self.rows if r.tenant == tenant and (thread_id is None or r.thread_id == thread_id)]

    def kinds(self) -> list[str]:
        return [r.kind for r in self.rows]

    def of(self, kind: str) -> list[SimpleNamespace]:
        return [r for r in self.rows if r.kind == kind]


class FakeRunIndex:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def record(self, thread_id: str, **kw: Any) -> None:
        self.records.append({"thread_id": thread_id, **kw})


class FakeQuotas:
    def __init__(self, remaining: int = 1_000_000) -> None:
        self.left = remaining
        self.charged: list[tuple[str, int, str | None]] = []

    def remaining(self, tenant: str, now: datetime, user: str | None = None) -> int:
        return self.left

    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False,
               user: str | None = None) -> bool:
        self.charged.append((tenant, tokens, user))
        self.left -= tokens
        return True


@dataclass
class FakeGateway:
    """Returns what it was given for each task (or raises it); calls ``on_call`` once per task."""

    triage_result: TriageResult | Exception | None = None
    extraction: Extraction | Exception | None = None
    proposal: PlanProposal | Exception | None = None
    tokens: int = 7
    asked: list[tuple[str, Any]] = field(default_factory=list)

    def _answer(self, task: str, value: Any, arg: Any, on_call: Any) -> Any:
        self.asked.append((task, arg))
        if on_call is not None:
            on_call(GatewayCall(task=task, provider="fake", ok=not isinstance(value, Exception), tokens_in=self.tokens,
                                ms=1.0))
        if isinstance(value, Exception):
            raise value
        if value is None:
            raise AssertionError(f"the test gave the fake gateway no {task} answer")
        return value

    def triage(self, ticket: Ticket, *, on_call: Any = None) -> TriageResult:
        return self._answer("triage", self.triage_result, ticket, on_call)

    def extract(self, ticket: Ticket, route: Route, *, on_call: Any = None) -> Extraction:
        return self._answer("extract", self.extraction, (ticket, route), on_call)

    def plan(self, planning: PlanningInput, *, on_call: Any = None) -> PlanProposal:
        return self._answer("plan", self.proposal, planning, on_call)


class FakeTools:
    """Answers tool calls from ``outputs`` (tool name → output dict, or a ToolResult)."""

    def __init__(self, outputs: Mapping[str, Any] | None = None) -> None:
        self.outputs = dict(outputs or {})
        self.calls: list[tuple[str, dict[str, Any], ToolContext]] = []

    def call(self, name: str, args: Mapping[str, Any], ctx: ToolContext) -> ToolResult:
        self.calls.append((name, dict(args), ctx))
        if name not in ctx.allowlist:
            return ToolResult(ok=False, error_code="tool_not_allowed", attempts=0)
        out = self.outputs.get(name)
        if isinstance(out, ToolResult):
            return out
        if out is None:
            return ToolResult(ok=False, error_code="not_found", attempts=1)
        return ToolResult(ok=True, output=out, attempts=1)


class FakeBackOffice:
    """Store reads from in-memory records: ``orders``/``subscriptions`` by id (with ``customer_id``)."""

    def __init__(self, *, orders: Iterable[dict[str, Any]] = (), subscriptions: Iterable[dict[str, Any]] = (),
                 customers: Iterable[dict[str, Any]] = (), reships: Iterable[dict[str, Any]] = (),
                 resets: Iterable[dict[str, Any]] = ()) -> None:
        self.orders = {o["id"]: o for o in orders}
        self.subscriptions = {s["id"]: s for s in subscriptions}
        self.customers = {c["id"]: c for c in customers}
        self.reships = list(reships)
        self.resets = list(resets)

    def get_order(self, tenant: str, order_id: str) -> dict[str, Any] | None:
        return self.orders.get(order_id)

    def get_subscription(self, tenant: str, subscription_id: str) -> dict[str, Any] | None:
        return self.subscriptions.get(subscription_id)

    def list_orders(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        return [o for o in self.orders.values() if o.get("customer_id") == customer_id]

    def list_subscriptions(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        return [s for s in self.subscriptions.values() if s.get("customer_id") == customer_id]

    def get_customer(self, tenant: str, customer_id: str) -> dict[str, Any] | None:
        return self.customers.get(customer_id)

    def list_reships(self, tenant: str, order_id: str) -> list[dict[str, Any]]:
        return [r for r in self.reships if r.get("order_id") == order_id]

    def list_password_resets(self, tenant: str, customer_id: str) -> list[dict[str, Any]]:
        return [r for r in self.resets if r.get("customer_id") == customer_id]


class FakeRefunds:
    """keel's refund ledger: ``recent`` returns ``rows``; holds and locks are recorded."""

    def __init__(self, rows: Sequence[dict[str, Any]] = ()) -> None:
        self.rows = list(rows)
        self.asked: list[dict[str, Any]] = []
        self.holds: list[tuple[Any, ...]] = []
        self.locks: list[tuple[str, str]] = []

    def recent(self, tenant: str, customer_id: str, since: datetime, *, exclude_thread: str = "",
               exclude_keys: Sequence[str] = (), tx: Any = None) -> list[dict[str, Any]]:
        self.asked.append({"tenant": tenant, "customer_id": customer_id, "since": since,
                           "exclude_thread": exclude_thread, "exclude_keys": list(exclude_keys)})
        return list(self.rows)

    def hold(self, tenant: str, thread_id: str, plan_hash: str, customer_id: str,
             refunds: Iterable[tuple[int, str, int]], now: datetime) -> None:
        self.holds.append((tenant, thread_id, plan_hash, customer_id, list(refunds)))

    def lock(self, tx: Any, tenant: str, customer_id: str) -> None:
        self.locks.append((tenant, customer_id))


def context(deps: type | None = None, **fields: Any) -> SimpleNamespace:
    """A run context holding exactly ``fields``: those the node's dependency protocol
    ``deps`` (``graphs.context.TriageDeps`` …) names, no more and no fewer. A node that
    uses anything else fails with AttributeError."""
    if deps is not None:
        assert set(fields) == protocol_fields(deps), (deps.__name__, sorted(set(fields) ^ protocol_fields(deps)))
    return SimpleNamespace(**fields)


def runtime(ctx: Any) -> Runtime[Any]:
    """LangGraph's node runtime around a fake context."""
    return Runtime(context=ctx)


def clock() -> datetime:
    return NOW


def caps(**kw: Any) -> RunCaps:
    return RunCaps(**{"max_tool_calls": 20, "wall_clock_s": 3600.0, "max_retries": 3, **kw})


def engine() -> PolicyEngine:
    """The real policy engine over the shipped pack: pure, no database."""
    return PolicyEngine(PACK, cards())
