"""Run budgets (pure functions over a JSON dict) and the tenant token budget on SQLite."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from guards.budgets import BUDGET_EXCEEDED, RunCaps, TenantTokenBudget, charge_tool_call, check, new_budget
from guards.policy import load_policy
from keel.db import Database

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=timezone.utc)
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
    late = datetime(2026, 11, 25, 23, 59, 59, tzinfo=timezone.utc)
    assert not tokens.charge("acme", 1, late)
    next_day = datetime(2026, 11, 26, 0, 0, 0, tzinfo=timezone.utc)
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
