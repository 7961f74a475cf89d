"""Run budgets (tool calls, wall clock, retries) and the daily quotas of a tenant and its users.

A runaway plan or a retry storm must stop by itself and hand over to a human
(``budget_exceeded``), not burn money or hammer a back office. The per-run budget is a
plain JSON-able dict kept in graph state, so it is checkpointed with the run and
survives a pause for approval; the functions over it are pure (the caller passes the
clock).

The daily quotas (model tokens and runs, per UTC day) are shared by every run of a
tenant, so they live in the database: one row per (tenant, user, day), the tenant's own
total under the user ``""``. Each user's share is capped below the tenant's so that one
requester key (a leaked key, a runaway integration) cannot spend the whole tenant's day
and deny every other user of the tenant. Every count changes by one atomic
``INSERT … ON CONFLICT DO UPDATE … WHERE`` statement, so concurrent requests and runs
cannot overspend between a read and a write, on SQLite and Postgres alike.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, UTC
from typing import Any, Literal, TypedDict

from pydantic import Field

from keel import metrics
from keel.audit import AuditLog
from keel.db import Database
from keel.errors import KeelError
from keel.types import StrictModel

__all__ = [
    "BUDGET_EXCEEDED",
    "BudgetReason",
    "RunBudget",
    "RunCaps",
    "new_budget",
    "charge_tool_call",
    "check",
    "QuotaScope",
    "QuotaKind",
    "DailyQuotas",
    "QuotaRefusal",
    "seconds_until_next_day",
    "TenantTokenBudget",
]

log = logging.getLogger("keel.budgets")

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
    def from_pack(cls, pack: Any) -> RunCaps:
        """Caps from a :class:`guards.pack.PolicyPack` (or anything with ``.budgets``)."""
        b = pack.budgets
        return cls(max_tool_calls=b.max_tool_calls, wall_clock_s=b.wall_clock_s, max_retries=b.max_retries)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def new_budget(started_at: datetime) -> RunBudget:
    """A fresh budget for a run that started at ``started_at`` (naive means UTC)."""
    return {
        "started_at": _utc(started_at).astimezone(UTC).isoformat(),
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


# ------------------------------------------------------------------ daily quotas
QuotaScope = Literal["tenant", "user"]
"""Whose quota: the tenant's total, or one user's (one requester key's principal) share."""

QuotaKind = Literal["tokens", "runs"]
"""What a quota counts: model tokens, or runs admitted."""

TENANT_ROW = ""
"""The ``user_id`` of a tenant's own row: its total over all users."""


class DailyQuotas(StrictModel):
    """Daily limits per UTC day (normally the pack's ``[budgets]``); ``None``: no such quota.

    A quota is spent once its count reaches the limit: a run is admitted only while the
    tenant and the user are both under every limit, and a model call only while both
    still have tokens left.
    """

    tenant_tokens: int = Field(ge=0)
    user_tokens: int | None = Field(default=None, ge=0)
    tenant_runs: int | None = Field(default=None, ge=0)
    user_runs: int | None = Field(default=None, ge=0)
    alert_ratio: float = Field(default=0.8, gt=0, le=1)
    """Share of a quota whose crossing is alerted (one audit row a day per tenant or user)."""

    @classmethod
    def from_pack(cls, pack: Any) -> DailyQuotas:
        """Quotas from a :class:`guards.pack.PolicyPack` (or anything with ``.budgets``)."""
        b = pack.budgets
        return cls(tenant_tokens=b.tenant_daily_tokens, user_tokens=b.user_daily_tokens,
                   tenant_runs=b.tenant_daily_runs, user_runs=b.user_daily_runs, alert_ratio=b.quota_alert_ratio)

    def limit(self, scope: QuotaScope, quota: QuotaKind) -> int | None:
        """The limit of ``scope``'s ``quota`` (None: unlimited)."""
        if scope == "tenant":
            return self.tenant_tokens if quota == "tokens" else self.tenant_runs
        return self.user_tokens if quota == "tokens" else self.user_runs

    def alert_at(self, limit: int) -> int:
        """The count at which a quota of ``limit`` is alerted (at least 1)."""
        return max(1, math.ceil(limit * self.alert_ratio))


class QuotaRefusal(StrictModel):
    """Why a run is refused before it is queued: which quota is spent, and until when."""

    scope: QuotaScope
    quota: QuotaKind
    used: int
    limit: int
    retry_after_s: int = Field(ge=1)
    """Seconds until the quota frees: the next UTC midnight (every quota is per UTC day)."""

    @property
    def setting(self) -> str:
        """The pack setting that sets this quota (``[budgets] user_daily_runs`` …)."""
        return f"{self.scope}_daily_{self.quota}"

    def message(self) -> str:
        """A reason safe to show the caller: whose quota, which, and when it frees."""
        whose = "the tenant's" if self.scope == "tenant" else "this user's"
        what = "model-token budget" if self.quota == "tokens" else "run quota"
        return (f"{whose} daily {what} is spent ({self.used} of {self.limit}, [budgets] {self.setting}); "
                f"it resets at 00:00 UTC, in {self.retry_after_s} s")


def seconds_until_next_day(now: datetime) -> int:
    """Whole seconds from ``now`` (naive means UTC) to the next UTC midnight (at least 1)."""
    at = _utc(now).astimezone(UTC)
    midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return max(1, math.ceil((midnight - at).total_seconds()))


class _Refused(KeelError):
    """Rolls a quota transaction back (all or nothing over the tenant's and the user's rows)."""

    def __init__(self, refusal: QuotaRefusal | None = None) -> None:
        super().__init__()
        self.refusal = refusal


class TenantTokenBudget:
    """The daily quotas of a tenant and of each of its users (UTC days), shared by all runs.

    Model tokens are charged as calls return (:meth:`charge`); runs are counted when
    the API admits them, before they are queued (:meth:`admit`). One row per (tenant,
    user, day), the tenant's total under the user ``""``; every count changes by one
    atomic upsert whose ``WHERE`` holds the limit, inside one transaction over the
    tenant's and the user's rows, so concurrent runs and requests cannot overspend
    between a read and a write, on SQLite and Postgres alike. The first change that
    takes a quota to ``alert_ratio`` of its limit (80 % by default) writes one
    ``budget_alert`` audit row and counts a metric; a flag on the row makes that
    happen once a day per tenant and per user, across processes.
    """

    TABLE = "keel_daily_usage"

    def __init__(
        self,
        db: Database,
        daily_limit: int,
        *,
        user_daily_tokens: int | None = None,
        tenant_daily_runs: int | None = None,
        user_daily_runs: int | None = None,
        alert_ratio: float = 0.8,
        audit: AuditLog | None = None,
    ) -> None:
        if daily_limit < 0:
            raise ValueError("daily_limit must be >= 0")
        self.db = db
        self.quotas = DailyQuotas(tenant_tokens=daily_limit, user_tokens=user_daily_tokens,
                                  tenant_runs=tenant_daily_runs, user_runs=user_daily_runs, alert_ratio=alert_ratio)
        self.audit = audit

    @classmethod
    def from_pack(cls, db: Database, pack: Any, *, audit: AuditLog | None = None) -> TenantTokenBudget:
        """The quotas of a policy pack's ``[budgets]``, alerting into ``audit``."""
        q = DailyQuotas.from_pack(pack)
        return cls(db, q.tenant_tokens, user_daily_tokens=q.user_tokens, tenant_daily_runs=q.tenant_runs,
                   user_daily_runs=q.user_runs, alert_ratio=q.alert_ratio, audit=audit)

    @property
    def daily_limit(self) -> int:
        """The tenant's daily model-token limit."""
        return self.quotas.tenant_tokens

    def setup(self) -> None:
        """Create the table if missing (idempotent)."""
        self.db.executescript(
            f"CREATE TABLE IF NOT EXISTS {self.TABLE} ("
            " tenant TEXT NOT NULL,"
            " user_id TEXT NOT NULL,"
            " day TEXT NOT NULL,"
            " tokens BIGINT NOT NULL DEFAULT 0,"
            " runs BIGINT NOT NULL DEFAULT 0,"
            " tokens_alerted INTEGER NOT NULL DEFAULT 0,"
            " runs_alerted INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (tenant, user_id, day))"
        )

    @staticmethod
    def _day(now: datetime) -> str:
        return _utc(now).astimezone(UTC).date().isoformat()

    @staticmethod
    def _subjects(user: str | None) -> list[tuple[QuotaScope, str]]:
        """The rows a charge or an admission touches: the tenant's, then the user's."""
        rows: list[tuple[QuotaScope, str]] = [("tenant", TENANT_ROW)]
        if user:
            rows.append(("user", user))
        return rows

    # -------------------------------------------------------------- tokens
    def charge(self, tenant: str, tokens: int, now: datetime, *, allow_overdraft: bool = False,
               user: str | None = None) -> bool:
        """Charge ``tokens`` to today's budget of the tenant (and of ``user``); True when charged.

        All or nothing: tokens that would take the tenant's or the user's day past its
        limit are recorded nowhere (reserve before a model call). With
        ``allow_overdraft`` (recording what a call actually used) the tokens are always
        recorded and the result says whether both days are still within their limits.
        """
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        day, t = self._day(now), self.TABLE
        upsert = (f"INSERT INTO {t} (tenant, user_id, day, tokens) VALUES (?, ?, ?, ?) "
                  f"ON CONFLICT (tenant, user_id, day) DO UPDATE SET tokens = {t}.tokens + excluded.tokens")
        seen: list[tuple[QuotaScope, str, int, bool]] = []
        try:
            with self.db.transaction() as tx:
                for scope, uid in self._subjects(user):
                    limit = self.quotas.limit(scope, "tokens")
                    if allow_overdraft or limit is None:
                        row = tx.fetchone(upsert + " RETURNING tokens, tokens_alerted", (tenant, uid, day, tokens))
                    elif tokens > limit:
                        raise _Refused()
                    else:
                        row = tx.fetchone(upsert + f" WHERE {t}.tokens + excluded.tokens <= ? RETURNING tokens, tokens_alerted",
                                          (tenant, uid, day, tokens, limit))
                    if row is None:
                        raise _Refused()
                    seen.append((scope, uid, int(row["tokens"]), bool(row["tokens_alerted"])))
        except _Refused:
            return False
        self._after_change(tenant, day, "tokens", seen)
        return all(used <= limit for scope, _, used, _ in seen
                   if (limit := self.quotas.limit(scope, "tokens")) is not None)

    def used(self, tenant: str, now: datetime, user: str | None = None) -> int:
        """Tokens charged to ``tenant`` (or to its ``user``) on ``now``'s UTC day."""
        row = self.db.fetchone(f"SELECT tokens FROM {self.TABLE} WHERE tenant = ? AND user_id = ? AND day = ?",
                               (tenant, user or TENANT_ROW, self._day(now)))
        return int(row["tokens"]) if row else 0

    def remaining(self, tenant: str, now: datetime, user: str | None = None) -> int:
        """Tokens ``tenant`` may still spend on ``now``'s UTC day (never negative); with
        ``user``, the least of the tenant's and that user's remainders."""
        usage = self._usage(tenant, user, self._day(now))
        left = [max(0, limit - usage.get(uid, (0, 0))[0])
                for scope, uid in self._subjects(user)
                if (limit := self.quotas.limit(scope, "tokens")) is not None]
        return min(left)

    # -------------------------------------------------------------- runs (admission)
    def runs(self, tenant: str, now: datetime, user: str | None = None) -> int:
        """Runs admitted for ``tenant`` (or its ``user``) on ``now``'s UTC day."""
        row = self.db.fetchone(f"SELECT runs FROM {self.TABLE} WHERE tenant = ? AND user_id = ? AND day = ?",
                               (tenant, user or TENANT_ROW, self._day(now)))
        return int(row["runs"]) if row else 0

    def check(self, tenant: str, user: str | None, now: datetime) -> QuotaRefusal | None:
        """Why a new run of ``user`` would be refused now (None: it would be admitted).

        A read only (one statement), for refusing before anything is stored; the count
        itself is taken by :meth:`admit`.
        """
        usage = self._usage(tenant, user, self._day(now))
        for scope, uid in self._subjects(user):
            tokens, runs = usage.get(uid, (0, 0))
            refusal = self._spent(scope, tokens, runs, now)
            if refusal is not None:
                return refusal
        return None

    def admit(self, tenant: str, user: str | None, now: datetime) -> QuotaRefusal | None:
        """Count one new run for the tenant and ``user`` if no quota of either is spent.

        None when admitted (the run is counted); else the refusal, and nothing is counted.
        A run the caller then fails to queue is given back with :meth:`release`.
        """
        day = self._day(now)
        seen: list[tuple[QuotaScope, str, int, bool]] = []
        try:
            with self.db.transaction() as tx:
                for scope, uid in self._subjects(user):
                    row = self._take_run(tx, tenant, uid, day, scope)
                    if row is None:
                        raise _Refused(self._refusal_in(tx, tenant, uid, day, scope, now))
                    seen.append((scope, uid, int(row["runs"]), bool(row["runs_alerted"])))
        except _Refused as r:
            return r.refusal
        self._after_change(tenant, day, "runs", seen)
        return None

    def release(self, tenant: str, user: str | None, now: datetime) -> None:
        """Give back a run counted by :meth:`admit` (same ``now``) that was never queued."""
        self.db.execute(
            f"UPDATE {self.TABLE} SET runs = runs - 1 WHERE tenant = ? AND day = ? AND user_id IN (?, ?) AND runs > 0",
            (tenant, self._day(now), TENANT_ROW, user or TENANT_ROW),
        )

    def _take_run(self, tx: Any, tenant: str, uid: str, day: str, scope: QuotaScope) -> dict[str, Any] | None:
        """One more run on the row, if its run and token quotas both have room (one statement)."""
        t = self.TABLE
        tokens, runs = self.quotas.limit(scope, "tokens"), self.quotas.limit(scope, "runs")
        if tokens == 0 or runs == 0:
            return None  # spent before anything is counted
        conds: list[str] = []
        params: list[Any] = [tenant, uid, day]
        if runs is not None:
            conds.append(f"{t}.runs < ?")
            params.append(runs)
        if tokens is not None:
            conds.append(f"{t}.tokens < ?")
            params.append(tokens)
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        return tx.fetchone(
            f"INSERT INTO {t} (tenant, user_id, day, runs) VALUES (?, ?, ?, 1) "
            f"ON CONFLICT (tenant, user_id, day) DO UPDATE SET runs = {t}.runs + 1{where} "
            "RETURNING runs, runs_alerted",
            params,
        )

    def _refusal_in(self, tx: Any, tenant: str, uid: str, day: str, scope: QuotaScope, now: datetime) -> QuotaRefusal:
        """The refusal of a row whose conditional update did not apply (read in the same transaction)."""
        row = tx.fetchone(f"SELECT tokens, runs FROM {self.TABLE} WHERE tenant = ? AND user_id = ? AND day = ?",
                          (tenant, uid, day)) or {"tokens": 0, "runs": 0}
        tokens, runs = int(row["tokens"]), int(row["runs"])
        refusal = self._spent(scope, tokens, runs, now)
        if refusal is None:  # cannot happen: the update's WHERE was false on this very row
            refusal = QuotaRefusal(scope=scope, quota="runs", used=runs, limit=runs,
                                   retry_after_s=seconds_until_next_day(now))
        return refusal

    def _spent(self, scope: QuotaScope, tokens: int, runs: int, now: datetime) -> QuotaRefusal | None:
        """The refusal for a row with these counts, tokens first (None: room left in both)."""
        for quota, used in (("tokens", tokens), ("runs", runs)):
            limit = self.quotas.limit(scope, quota)  # type: ignore[arg-type]
            if limit is not None and used >= limit:
                return QuotaRefusal(scope=scope, quota=quota, used=used, limit=limit,  # type: ignore[arg-type]
                                    retry_after_s=seconds_until_next_day(now))
        return None

    def _usage(self, tenant: str, user: str | None, day: str) -> dict[str, tuple[int, int]]:
        """``{user_id: (tokens, runs)}`` of the tenant's row and the user's, in one statement."""
        uid = user or TENANT_ROW
        row = self.db.fetchone(
            "SELECT COALESCE(SUM(CASE WHEN user_id = ? THEN tokens END), 0) AS tenant_tokens,"
            " COALESCE(SUM(CASE WHEN user_id = ? THEN runs END), 0) AS tenant_runs,"
            " COALESCE(SUM(CASE WHEN user_id = ? THEN tokens END), 0) AS user_tokens,"
            " COALESCE(SUM(CASE WHEN user_id = ? THEN runs END), 0) AS user_runs"
            f" FROM {self.TABLE} WHERE tenant = ? AND day = ? AND user_id IN (?, ?)",
            (TENANT_ROW, TENANT_ROW, uid, uid, tenant, day, TENANT_ROW, uid),
        ) or {}
        return {TENANT_ROW: (int(row.get("tenant_tokens") or 0), int(row.get("tenant_runs") or 0)),
                uid: (int(row.get("user_tokens") or 0), int(row.get("user_runs") or 0))}

    # -------------------------------------------------------------- alerts
    def _after_change(self, tenant: str, day: str, quota: QuotaKind, seen: list[tuple[QuotaScope, str, int, bool]]) -> None:
        """Gauge the tenant's use, and alert each row that has just reached the alert ratio."""
        for scope, uid, used, alerted in seen:
            limit = self.quotas.limit(scope, quota)
            if limit is None:
                continue
            if scope == "tenant":
                metrics.quota_used(tenant, quota, used, limit)
            if not alerted and limit > 0 and used >= self.quotas.alert_at(limit):
                self._alert(tenant, scope, uid, day, quota, used, limit)

    def _alert(self, tenant: str, scope: QuotaScope, uid: str, day: str, quota: QuotaKind, used: int, limit: int) -> None:
        """One audit row and one metric count, by whichever process sets the row's flag first.

        Never raises: a failed alert must not fail the model call or the admission that
        crossed the line; its flag is cleared so that the next change alerts again.
        """
        flag = f"{quota}_alerted"
        where = "tenant = ? AND user_id = ? AND day = ?"
        key = (tenant, uid, day)
        try:
            if self.db.execute(f"UPDATE {self.TABLE} SET {flag} = 1 WHERE {where} AND {flag} = 0", key) != 1:
                return  # another request or process alerted first
            metrics.quota_alert(tenant, scope, quota)
            if self.audit is not None:
                self.audit.append(tenant, "budget_alert", actor="system", data={
                    "event": "quota_alert", "scope": scope, "quota": quota, "user": uid or None, "day": day,
                    "used": used, "limit": limit, "ratio": self.quotas.alert_ratio,
                    "setting": f"{scope}_daily_{quota}"})
        except Exception:  # see the docstring
            log.warning("could not record the %s %s quota alert of %s", scope, quota, tenant, exc_info=True)
            try:
                self.db.execute(f"UPDATE {self.TABLE} SET {flag} = 0 WHERE {where}", key)
            except Exception:
                log.warning("could not re-arm the %s %s quota alert of %s", scope, quota, tenant, exc_info=True)
