"""Run budgets (tool calls, wall clock, retries) and the per-tenant daily token budget.

A runaway plan or a retry storm must stop by itself and hand over to a human
(``budget_exceeded``), not burn money or hammer a back office. The per-run budget is a
plain JSON-able dict kept in graph state, so it is checkpointed with the run and
survives a pause for approval; the functions over it are pure (the caller passes the
clock). The tenant token budget is shared by every run of a tenant, so it lives in the
database and is charged with one atomic upsert.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, TypedDict

from pydantic import Field

from keel.db import Database
from keel.types import StrictModel

__all__ = [
    "BUDGET_EXCEEDED",
    "BudgetReason",
    "RunBudget",
    "RunCaps",
    "new_budget",
    "charge_tool_call",
    "check",
    "TenantTokenBudget",
]

BudgetReason = Literal["budget_exceeded"]
"""The one reason code budgets produce."""

BUDGET_EXCEEDED: BudgetReason = "budget_exceeded"


class RunBudget(TypedDict):
    """The per-run budget as stored in graph state (JSON-able)."""

    started_at: str
    """ISO 8601 start of the run (UTC)."""
    tool_calls: int
    """Tool calls charged so far."""
    retries: int
    """Total retries over all calls (for traces)."""
    max_call_retries: int
    """Most retries any single call needed."""


class RunCaps(StrictModel):
    """Per-run limits, normally taken from the policy pack's ``[budgets]``."""

    max_tool_calls: int = Field(ge=1)
    wall_clock_s: float = Field(gt=0)
    max_retries: int = Field(ge=0)

    @classmethod
    def from_pack(cls, pack: Any) -> "RunCaps":
        """Caps from a :class:`guards.policy.PolicyPack` (or anything with ``.budgets``)."""
        b = pack.budgets
        return cls(max_tool_calls=b.max_tool_calls, wall_clock_s=b.wall_clock_s, max_retries=b.max_retries)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=timezone.utc)


def new_budget(started_at: datetime) -> RunBudget:
    """A fresh budget for a run that started at ``started_at`` (naive means UTC)."""
    return {
        "started_at": _utc(started_at).astimezone(timezone.utc).isoformat(),
        "tool_calls": 0,
        "retries": 0,
        "max_call_retries": 0,
    }


def charge_tool_call(budget: RunBudget | dict[str, Any], retries: int = 0) -> RunBudget:
    """A new budget with one more tool call (that needed ``retries`` retries) charged.

    Charge *before* running a call and :func:`check` the result: a non-None verdict
    means the call must not run. The input dict is not modified (graph state is
    replaced, not mutated).
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    return {
        "started_at": budget["started_at"],
        "tool_calls": int(budget["tool_calls"]) + 1,
        "retries": int(budget["retries"]) + retries,
        "max_call_retries": max(int(budget["max_call_retries"]), retries),
    }


def check(budget: RunBudget | dict[str, Any], caps: RunCaps, now: datetime) -> BudgetReason | None:
    """``budget_exceeded`` when any cap is exceeded (strictly over), else None.

    Exactly ``max_tool_calls`` calls, ``max_retries`` retries of one call and
    ``wall_clock_s`` seconds are still within budget.
    """
    elapsed = (_utc(now) - datetime.fromisoformat(budget["started_at"])).total_seconds()
    if (
        budget["tool_calls"] > caps.max_tool_calls
        or budget["max_call_retries"] > caps.max_retries
        or elapsed > caps.wall_clock_s
    ):
        return BUDGET_EXCEEDED
    return None


class TenantTokenBudget:
    """A tenant's daily budget of model tokens (UTC days), shared by all its runs.

    One row per (tenant, day); charging is a single ``INSERT … ON CONFLICT DO UPDATE …
    WHERE`` statement, so concurrent runs cannot overspend between a read and a write,
    on SQLite and Postgres alike.
    """

    TABLE = "keel_tenant_tokens"

    def __init__(self, db: Database, daily_limit: int) -> None:
        if daily_limit < 0:
            raise ValueError("daily_limit must be >= 0")
        self.db = db
        self.daily_limit = daily_limit

    def setup(self) -> None:
        """Create the table if missing (idempotent)."""
        self.db.executescript(
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
            " tenant TEXT NOT NULL,"
            " day TEXT NOT NULL,"
            " tokens BIGINT NOT NULL DEFAULT 0,"
            " PRIMARY KEY (tenant, day))"
        )

    @staticmethod
    def _day(now: datetime) -> str:
        return _utc(now).astimezone(timezone.utc).date().isoformat()

    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False) -> bool:
        """Charge ``tokens`` to today's budget if they fit; True when charged.

        All or nothing: tokens that would take the day past the limit are not recorded
        (reserve before a model call). With ``allow_overdraft`` (recording what a call
        actually used) the tokens are always recorded and the result says whether the
        day is still within the limit.
        """
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        day = self._day(now)
        t = self.TABLE
        with self.db.transaction() as tx:
            if allow_overdraft:
                tx.execute(
                    f"INSERT INTO {t} (tenant, day, tokens) VALUES (?, ?, ?) "
                    f"ON CONFLICT (tenant, day) DO UPDATE SET tokens = {t}.tokens + excluded.tokens",
                    (tenant, day, tokens),
                )
                row = tx.fetchone(f"SELECT tokens FROM {t} WHERE tenant = ? AND day = ?", (tenant, day))
                return row is not None and int(row["tokens"]) <= self.daily_limit
            if tokens > self.daily_limit:
                return False
            changed = tx.execute(
                f"INSERT INTO {t} (tenant, day, tokens) VALUES (?, ?, ?) "
                f"ON CONFLICT (tenant, day) DO UPDATE SET tokens = {t}.tokens + excluded.tokens "
                f"WHERE {t}.tokens + excluded.tokens <= ?",
                (tenant, day, tokens, self.daily_limit),
            )
            return changed == 1

    def used(self, tenant: str, now: datetime) -> int:
        """Tokens charged to ``tenant`` on ``now``'s UTC day."""
        row = self.db.fetchone(f"SELECT tokens FROM {self.TABLE} WHERE tenant = ? AND day = ?", (tenant, self._day(now)))
        return int(row["tokens"]) if row else 0

    def remaining(self, tenant: str, now: datetime) -> int:
        """Tokens ``tenant`` may still spend on ``now``'s UTC day (never negative)."""
        return max(0, self.daily_limit - self.used(tenant, now))
