"""Run budgets (pure functions over a JSON dict) and the tenant token budget on SQLite."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone, UTC
from pathlib import Path

import pytest

from guards.budgets import BUDGET_EXCEEDED, RunCaps, TenantTokenBudget, charge_tool_call, check, new_budget
from guards.pack import load_policy
from keel.db import Database

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
CAPS = RunCaps.from_pack(load_policy())


def test_caps_come_from_the_pack() -> None:
    assert CAPS == RunCaps(max_tool_calls=8, wall_clock_s=30, max_retries=2)


def test_new_budget_is_json_and_charging_does_not_mutate() -> None:
    b = new_budget(T0)
    assert json.loads(json.dumps(b)) == b
    assert b == {"started_at": "2026-11-25T12:00:00+00:00", "tool_calls": 0, "retries": 0, "max_call_retries": 0}
    b2 = charge_tool_call(b, retries=1)
    assert b["tool_calls"] == 0
    assert b2 == {**b, "tool_calls": 1, "retries": 1, "max_call_retries": 1}
    with pytest.raises(ValueError):
        charge_tool_call(b, retries=-1)


def test_naive_start_is_utc() -> None:
    assert new_budget(datetime(2026, 11, 25, 12))["started_at"] == "2026-11-25T12:00:00+00:00"


def test_tool_call_cap_edge() -> None:
    b = new_budget(T0)
    for _ in range(8):
        b = charge_tool_call(b)
    assert check(b, CAPS, T0) is None
    assert check(charge_tool_call(b), CAPS, T0) == BUDGET_EXCEEDED


def test_retry_cap_edge_is_per_call() -> None:
    b = charge_tool_call(charge_tool_call(new_budget(T0), retries=2), retries=2)
    assert b["retries"] == 4 and check(b, CAPS, T0) is None
    assert check(charge_tool_call(b, retries=3), CAPS, T0) == BUDGET_EXCEEDED


def test_wall_clock_edge() -> None:
    b = new_budget(T0)
    assert check(b, CAPS, T0 + timedelta(seconds=30)) is None
    assert check(b, CAPS, T0 + timedelta(seconds=30, microseconds=1)) == BUDGET_EXCEEDED
    assert check(b, CAPS, datetime(2026, 11, 25, 12, 0, 31)) == BUDGET_EXCEEDED  # naive now = UTC


@pytest.fixture()
def tokens(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'tokens.db'}")
    budget = TenantTokenBudget(db, daily_limit=1000)
    budget.setup()
    budget.setup()  # idempotent
    yield budget
    db.close()


def test_token_budget_charges_up_to_the_exact_limit(tokens: TenantTokenBudget) -> None:
    assert tokens.remaining("acme", T0) == 1000
    assert tokens.charge("acme", 600, T0)
    assert tokens.charge("acme", 400, T0)
    assert tokens.remaining("acme", T0) == 0
    assert not tokens.charge("acme", 1, T0)
    assert tokens.used("acme", T0) == 1000  # a refused charge records nothing
    assert tokens.charge("acme", 0, T0)


def test_token_budget_refuses_a_charge_bigger_than_the_limit(tokens: TenantTokenBudget) -> None:
    assert not tokens.charge("acme", 1001, T0)
    assert tokens.used("acme", T0) == 0
    assert tokens.charge("acme", 999, T0) and not tokens.charge("acme", 2, T0)
    assert tokens.remaining("acme", T0) == 1


def test_token_budget_is_per_tenant_and_per_utc_day(tokens: TenantTokenBudget) -> None:
    assert tokens.charge("acme", 1000, T0)
    assert tokens.charge("globex", 1000, T0)
    late = datetime(2026, 11, 25, 23, 59, 59, tzinfo=UTC)
    assert not tokens.charge("acme", 1, late)
    next_day = datetime(2026, 11, 26, 0, 0, 0, tzinfo=UTC)
    assert tokens.remaining("acme", next_day) == 1000 and tokens.charge("acme", 1, next_day)
    # 2026-11-25T20:00-05:00 is already the 26th in UTC
    assert tokens.used("acme", datetime(2026, 11, 25, 20, tzinfo=timezone(timedelta(hours=-5)))) == 1


def test_token_budget_overdraft_records_actual_usage(tokens: TenantTokenBudget) -> None:
    assert tokens.charge("acme", 900, T0, allow_overdraft=True)
    assert not tokens.charge("acme", 200, T0, allow_overdraft=True)
    assert tokens.used("acme", T0) == 1100 and tokens.remaining("acme", T0) == 0
    assert not tokens.charge("acme", 0, T0)


def test_token_budget_rejects_negative(tokens: TenantTokenBudget) -> None:
    with pytest.raises(ValueError):
        tokens.charge("acme", -1, T0)
    with pytest.raises(ValueError):
        TenantTokenBudget(tokens.db, -1)


def test_token_budget_is_atomic_under_concurrency(tokens: TenantTokenBudget) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            ok = tokens.charge("acme", 7, T0)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1000 // 7
    assert tokens.used("acme", T0) == 7 * (1000 // 7)


# ------------------------------------------------------------------ daily quotas of a tenant and its users
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def quota_db(request, tmp_path: Path):
    """The same quota tests on the embedded store and on Postgres."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'quotas.db'}")
        yield db
        db.close()
    else:
        from keel.db import open_database

        pg_url = request.getfixturevalue("pg_url")
        yield open_database(pg_url + ("&" if "?" in pg_url else "?") + "application_name=keel_quota_tests")


@pytest.fixture()
def quotas(quota_db):
    """Tenant: 1,000 tokens and 10 runs a day; each user: 400 tokens and 4 runs; alerts into an audit log."""
    import uuid

    from guards.dlp import redact
    from keel.audit import AuditLog

    audit = AuditLog(quota_db, redact=redact)
    audit.setup()
    q = TenantTokenBudget(quota_db, 1000, user_daily_tokens=400, tenant_daily_runs=10, user_daily_runs=4, audit=audit)
    q.setup()
    q.tenant = "t" + uuid.uuid4().hex[:10]  # a fresh tenant per test: the Postgres database is the session's
    return q


def _alerts(q: TenantTokenBudget) -> list[dict]:
    return [r.data for r in q.audit.list(q.tenant, limit=1000) if r.kind == "budget_alert"]


def test_seconds_until_next_utc_day() -> None:
    from guards.budgets import seconds_until_next_day

    assert seconds_until_next_day(T0) == 12 * 3600
    assert seconds_until_next_day(datetime(2026, 11, 25, 23, 59, 59, 500000, tzinfo=UTC)) == 1
    assert seconds_until_next_day(datetime(2026, 11, 25, 0, 0, tzinfo=UTC)) == 86400
    assert seconds_until_next_day(datetime(2026, 11, 25, 20, tzinfo=timezone(timedelta(hours=-5)))) == 23 * 3600
    assert seconds_until_next_day(datetime(2026, 11, 25, 18)) == 6 * 3600  # naive = UTC


def test_quotas_come_from_the_pack(quota_db) -> None:
    q = TenantTokenBudget.from_pack(quota_db, load_policy())
    assert (q.quotas.tenant_tokens, q.quotas.user_tokens, q.quotas.tenant_runs, q.quotas.user_runs) == (
        5_000_000, 500_000, 20_000, 2_000)
    assert q.quotas.alert_ratio == 0.8 and q.daily_limit == 5_000_000


def test_user_tokens_are_charged_to_the_user_and_the_tenant(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    assert quotas.charge(t, 300, T0, user="rita")
    assert (quotas.used(t, T0), quotas.used(t, T0, user="rita"), quotas.used(t, T0, user="ravi")) == (300, 300, 0)
    assert quotas.remaining(t, T0, user="rita") == 100 and quotas.remaining(t, T0, user="ravi") == 400
    assert quotas.remaining(t, T0) == 700
    # all or nothing: over the user's share, nothing is recorded for the tenant either
    assert not quotas.charge(t, 101, T0, user="rita")
    assert (quotas.used(t, T0), quotas.used(t, T0, user="rita")) == (300, 300)
    # a charge bigger than the user's whole share is refused outright
    assert not quotas.charge(t, 401, T0, user="ravi") and quotas.used(t, T0) == 300


def test_the_tenant_limit_binds_users_too(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    for user in ("u1", "u2"):
        assert quotas.charge(t, 400, T0, user=user)
    assert quotas.remaining(t, T0, user="u3") == 200  # the tenant's remainder, below the user's share
    assert not quotas.charge(t, 201, T0, user="u3")
    assert quotas.used(t, T0, user="u3") == 0  # refused by the tenant row: the user row was rolled back


def test_overdraft_records_both_and_says_whether_within(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    assert quotas.charge(t, 350, T0, allow_overdraft=True, user="rita")
    assert not quotas.charge(t, 100, T0, allow_overdraft=True, user="rita")  # the user is over
    assert (quotas.used(t, T0), quotas.used(t, T0, user="rita")) == (450, 450)
    assert quotas.remaining(t, T0, user="rita") == 0 and quotas.remaining(t, T0) == 550


def test_admission_counts_runs_per_user_and_tenant(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    for _ in range(4):
        assert quotas.admit(t, "rita", T0) is None
    refusal = quotas.admit(t, "rita", T0)
    assert refusal is not None
    assert (refusal.scope, refusal.quota, refusal.used, refusal.limit, refusal.retry_after_s) == ("user", "runs", 4, 4, 43200)
    assert refusal.setting == "user_daily_runs" and "user_daily_runs" in refusal.message()
    assert quotas.check(t, "rita", T0) == refusal  # the read-only check agrees
    assert (quotas.runs(t, T0), quotas.runs(t, T0, user="rita")) == (4, 4)  # the refusal counted nothing
    # another user of the tenant still runs, up to the tenant's 10
    for user in ("ravi", "ravi", "ravi", "ravi", "ada", "ada"):
        assert quotas.admit(t, user, T0) is None
    for user in ("ada", "newcomer"):
        refusal = quotas.admit(t, user, T0)
        assert refusal is not None and (refusal.scope, refusal.quota, refusal.used, refusal.limit) == ("tenant", "runs", 10, 10)
    assert quotas.runs(t, T0, user="newcomer") == 0
    assert quotas.check(t, "newcomer", T0).scope == "tenant"
    # the next UTC day starts afresh
    tomorrow = T0 + timedelta(days=1)
    assert quotas.check(t, "rita", tomorrow) is None and quotas.admit(t, "rita", tomorrow) is None


def test_a_spent_token_quota_refuses_admission(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    quotas.charge(t, 400, T0, allow_overdraft=True, user="rita")
    refusal = quotas.admit(t, "rita", T0)
    assert refusal is not None and (refusal.scope, refusal.quota, refusal.used, refusal.limit) == ("user", "tokens", 400, 400)
    assert quotas.admit(t, "ravi", T0) is None
    quotas.charge(t, 600, T0, allow_overdraft=True, user="ravi")
    refusal = quotas.admit(t, "ada", T0)
    assert refusal is not None and (refusal.scope, refusal.quota, refusal.setting) == ("tenant", "tokens", "tenant_daily_tokens")
    assert quotas.runs(t, T0) == 1


def test_release_gives_a_run_back(quotas: TenantTokenBudget) -> None:
    t = quotas.tenant
    for _ in range(4):
        assert quotas.admit(t, "rita", T0) is None
    quotas.release(t, "rita", T0)
    assert (quotas.runs(t, T0), quotas.runs(t, T0, user="rita")) == (3, 3)
    assert quotas.admit(t, "rita", T0) is None


def test_zero_quotas_refuse_at_once(quota_db) -> None:
    q = TenantTokenBudget(quota_db, 0, tenant_daily_runs=5)
    q.setup()
    refusal = q.admit("zero-tenant", "rita", T0)
    assert refusal is not None and (refusal.scope, refusal.quota, refusal.limit) == ("tenant", "tokens", 0)
    assert q.runs("zero-tenant", T0) == 0


def test_alert_at_80_percent_once_per_tenant_and_user_a_day(quotas: TenantTokenBudget) -> None:
    from prometheus_client import REGISTRY

    t = quotas.tenant

    def metric(scope: str, quota: str) -> float:
        return REGISTRY.get_sample_value("keel_quota_alerts_total", {"tenant": t, "scope": scope, "quota": quota}) or 0.0

    assert quotas.charge(t, 310, T0, user="rita")  # user 77.5%, tenant 31%
    assert _alerts(quotas) == []
    assert quotas.charge(t, 10, T0, user="rita")  # user 80%: alert
    assert quotas.charge(t, 50, T0, user="rita")  # still over 80%: no second alert
    assert [(a["scope"], a["quota"], a["user"], a["used"], a["limit"]) for a in _alerts(quotas)] == [
        ("user", "tokens", "rita", 320, 400)]
    quotas.charge(t, 400, T0, allow_overdraft=True, user="ravi")  # ravi at 100% and the tenant at 77%
    quotas.charge(t, 30, T0, allow_overdraft=True, user="ada")  # tenant 80%
    quotas.charge(t, 100, T0, allow_overdraft=True, user="ada")
    got = [(a["scope"], a["quota"], a["user"], a["setting"]) for a in _alerts(quotas)]
    assert got == [("user", "tokens", "rita", "user_daily_tokens"), ("user", "tokens", "ravi", "user_daily_tokens"),
                   ("tenant", "tokens", None, "tenant_daily_tokens")]
    assert (metric("user", "tokens"), metric("tenant", "tokens")) == (2.0, 1.0)
    assert REGISTRY.get_sample_value("keel_quota_used_ratio", {"tenant": t, "quota": "tokens"}) == pytest.approx(0.9)
    # runs: 4 of the user's 4 (alert at ceil(3.2) = 4), 8 of the tenant's 10
    for user in ("rita",) * 3:
        quotas.admit(t, user, T0)
    assert len(_alerts(quotas)) == 3
    quotas.admit(t, "rita", T0)
    for user in ("u1",) * 3 + ("u2",) * 3:
        quotas.admit(t, user, T0)
    runs_alerts = [(a["scope"], a["user"], a["used"]) for a in _alerts(quotas) if a["quota"] == "runs"]
    assert runs_alerts == [("user", "rita", 4), ("tenant", None, 8)]
    # a new day alerts again
    tomorrow = T0 + timedelta(days=1)
    quotas.charge(t, 320, tomorrow, user="rita")
    assert [(a["day"], a["user"]) for a in _alerts(quotas)][-1] == ("2026-11-26", "rita")
    assert quotas.audit.verify(t).ok


def test_quotas_are_atomic_under_concurrency(quotas: TenantTokenBudget) -> None:
    """Admissions and token charges from many threads at once: never more than a limit, and
    exactly one alert per row however many cross the line together."""
    t = quotas.tenant
    admitted: list[bool] = []
    charged: list[bool] = []
    lock = threading.Lock()

    def worker(user: str) -> None:
        for _ in range(4):
            ok = quotas.admit(t, user, T0) is None
            ok2 = quotas.charge(t, 30, T0, user=user)
            with lock:
                admitted.append(ok)
                charged.append(ok2)

    threads = [threading.Thread(target=worker, args=(u,)) for u in ("a", "b", "c", "a", "b", "c")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(admitted) == 10 and quotas.runs(t, T0) == 10
    assert all(quotas.runs(t, T0, user=u) <= 4 for u in "abc")
    assert sum(charged) * 30 == quotas.used(t, T0) <= 1000
    assert all(quotas.used(t, T0, user=u) <= 400 for u in "abc")
    alerts = [(a["scope"], a["quota"], a["user"]) for a in _alerts(quotas)]
    assert len(alerts) == len(set(alerts))  # never twice
    assert ("tenant", "runs", None) in alerts
