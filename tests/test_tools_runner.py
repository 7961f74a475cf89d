"""The runner: check order, exactly-once ledger (SQLite and Postgres), limits, timeouts, retries."""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone, UTC
from typing import Any

import pytest

from keel.db import Database
from tools.backoffice import BackOffice
from tools.contracts import TransientToolError
from tools.fixtures import demo_fixtures
from tools.registry import TOOLS
from tools.runner import ToolContext, ToolResult, ToolRunner

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
REFUND = {"order_id": "O-5001", "amount_cents": 1000, "reason": "broken"}


class Env:
    """A back office loaded with the demo fixtures under a fresh tenant, on one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tenant = f"t-{secrets.token_hex(4)}"
        self._open: list[Database] = []
        self._runners: list[ToolRunner] = []
        self.bo = self.backoffice()
        self.bo.setup()
        self.bo.load_fixtures(demo_fixtures().model_copy(update={"tenant": self.tenant}))

    def backoffice(self) -> BackOffice:
        """A new Database + BackOffice on the same store (what a restarted process gets)."""
        db = Database(self.url)
        self._open.append(db)
        return BackOffice(db)

    def runner(self, bo: BackOffice | None = None, **kw: Any) -> ToolRunner:
        runner = ToolRunner(bo or self.bo, **{"timeout_s": 5.0, "backoff_base_s": 0.01, **kw})
        self._runners.append(runner)
        return runner

    def ctx(self, key: str | None = None, customer: str = "C-1001", allow: frozenset[str] | None = None,
            tenant: str | None = None) -> ToolContext:
        return ToolContext(
            tenant=tenant or self.tenant, customer_id=customer, user_id="u-1",
            allowlist=allow if allow is not None else frozenset(TOOLS),
            idempotency_key=key, correlation_id="run-1", now=NOW,
        )

    def close(self) -> None:
        for r in self._runners:
            r.close()
        for db in self._open:
            db.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path) -> Iterator[Env]:
    url = f"sqlite:///{tmp_path}/bo.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    e = Env(url)
    yield e
    e.close()


@pytest.fixture
def lite(tmp_path) -> Iterator[Env]:
    """SQLite only: for checks that do not depend on the engine."""
    e = Env(f"sqlite:///{tmp_path}/bo.db")
    yield e
    e.close()


def _key() -> str:
    return f"plan-{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- ledger


def test_repeated_key_acts_once(env: Env) -> None:
    runner, key = env.runner(), _key()
    first = runner.call("issue_refund", REFUND, env.ctx(key))
    second = runner.call("issue_refund", REFUND, env.ctx(key))
    assert first.ok and not first.replayed
    assert second.ok and second.replayed and second.output == first.output
    assert env.bo.count_rows("refunds", env.tenant) == 1
    assert env.bo.count_rows("tool_ledger", env.tenant) == 1
    assert env.bo.get_order(env.tenant, "O-5001")["refunded_cents"] == 1000


def test_replay_survives_a_restart(env: Env) -> None:
    key = _key()
    first = env.runner().call("cancel_order", {"order_id": "O-5010"}, env.ctx(key))
    assert first.ok
    restarted = env.backoffice()  # a new Database instance on the same file / server
    again = env.runner(restarted).call("cancel_order", {"order_id": "O-5010"}, env.ctx(key))
    assert again.replayed and again.output == first.output
    # without the ledger this would fail: the order is no longer cancellable
    other = env.runner(restarted).call("cancel_order", {"order_id": "O-5010"}, env.ctx(_key()))
    assert other.error_code == "not_cancellable"


def test_concurrent_callers_with_one_key_act_once(env: Env) -> None:
    runner, key = env.runner(max_workers=8), _key()
    barrier = threading.Barrier(8)

    def go(_: int) -> ToolResult:
        barrier.wait()
        return runner.call("issue_refund", REFUND, env.ctx(key))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(go, range(8)))
    assert all(r.ok for r in results), results
    assert sum(not r.replayed for r in results) == 1
    assert len({r.output["refund_id"] for r in results}) == 1
    assert env.bo.count_rows("refunds", env.tenant) == 1
    assert env.bo.get_order(env.tenant, "O-5001")["refunded_cents"] == 1000


def test_concurrent_refunds_never_exceed_the_refundable(env: Env) -> None:
    runner = env.runner(max_workers=6)
    with ThreadPoolExecutor(6) as pool:  # 6 x 1000 on a 4599 order: at most 4 can succeed
        results = list(pool.map(lambda _: runner.call("issue_refund", REFUND, env.ctx(_key())), range(6)))
    assert sum(r.ok for r in results) == 4
    assert {r.error_code for r in results if not r.ok} == {"amount_exceeds_refundable"}
    assert env.bo.get_order(env.tenant, "O-5001")["refunded_cents"] == 4000


def test_repeated_key_with_other_arguments_conflicts(env: Env) -> None:
    runner, key = env.runner(), _key()
    assert runner.call("issue_refund", REFUND, env.ctx(key)).ok
    changed = runner.call("issue_refund", {**REFUND, "amount_cents": 999}, env.ctx(key))
    other_tool = runner.call("cancel_order", {"order_id": "O-5010"}, env.ctx(key))
    other_tenant = runner.call("issue_refund", REFUND, env.ctx(key, tenant=env.tenant + "x"))
    for result in (changed, other_tool, other_tenant):
        assert (result.ok, result.error_code, result.output) == (False, "idempotency_conflict", None)
    assert env.bo.count_rows("refunds", env.tenant) == 1
    assert env.bo.get_order(env.tenant, "O-5010")["status"] == "paid"


def test_a_refused_call_is_recorded_and_replayed(env: Env) -> None:
    runner, key = env.runner(), _key()
    args = {"order_id": "O-5006", "amount_cents": 7500}
    first = runner.call("issue_refund", args, env.ctx(key, customer="C-1008"))
    again = runner.call("issue_refund", args, env.ctx(key, customer="C-1008"))
    assert first.error_code == again.error_code == "amount_exceeds_refundable"
    assert again.replayed and env.bo.count_rows("refunds", env.tenant) == 0


# --------------------------------------------------------------------------- checks


def test_check_order_and_codes(lite: Env) -> None:
    runner = lite.runner()
    billing = frozenset({"get_customer", "get_order", "list_payments", "issue_refund", "cancel_subscription"})
    assert runner.call("drop_tables", {}, lite.ctx(allow=frozenset({"drop_tables"}))).error_code == "unknown_tool"
    refused = runner.call("cancel_order", {"order_id": "O-5010"}, lite.ctx(_key(), allow=billing))
    assert (refused.error_code, refused.attempts) == ("tool_not_allowed", 0)
    # the allowlist is checked before the arguments
    assert runner.call("cancel_order", {"bogus": 1}, lite.ctx(_key(), allow=billing)).error_code == "tool_not_allowed"
    assert runner.call("issue_refund", {"order_id": 5}, lite.ctx(allow=billing)).error_code == "invalid_arguments"
    no_key = runner.call("issue_refund", REFUND, lite.ctx(None, allow=billing))
    assert no_key.error_code == "idempotency_key_required"
    assert lite.bo.count_rows("refunds", lite.tenant) == 0
    assert runner.call("get_order", {"order_id": "O-5001"}, lite.ctx(None, allow=billing)).ok  # reads need no key
    assert lite.bo.get_order(lite.tenant, "O-5010")["status"] == "paid"


def test_rate_limit_per_tenant(lite: Env) -> None:
    runner = lite.runner(rate_per_minute=3)
    read = {"order_id": "O-5001"}
    assert [runner.call("get_order", read, lite.ctx()).ok for _ in range(3)] == [True] * 3
    limited = runner.call("get_order", read, lite.ctx())
    assert (limited.ok, limited.error_code, limited.attempts) == (False, "rate_limited", 0)
    other = runner.call("get_order", read, lite.ctx(tenant=lite.tenant + "-b"))
    assert other.error_code == "not_found"  # another tenant has its own bucket


def test_the_tenant_limit_refills(lite: Env) -> None:
    """The runner's per-tenant limit is keel's one in-process limiter (keel.ratelimit): a
    minute's worth at once, then the sustained rate."""
    now = [0.0]
    runner = lite.runner(rate_per_minute=60, clock=lambda: now[0])  # one call a second, burst 60
    read, ctx = {"order_id": "O-5001"}, lite.ctx()
    assert all(runner.call("get_order", read, ctx).ok for _ in range(60))
    assert runner.call("get_order", read, ctx).error_code == "rate_limited"
    now[0] = 2.5
    assert [runner.call("get_order", read, ctx).error_code for _ in range(3)] == [None, None, "rate_limited"]


def test_timeout_abandons_the_attempt(lite: Env) -> None:
    def slow_first(tool: str, attempt: int) -> None:
        time.sleep(0.6)

    runner, key = lite.runner(timeout_s=0.15, fault_hook=slow_first), _key()
    started = time.monotonic()
    result = runner.call("issue_refund", REFUND, lite.ctx(key))
    assert time.monotonic() - started < 0.5
    assert (result.ok, result.error_code, result.attempts) == (False, "timeout", 1)
    time.sleep(0.7)  # the abandoned attempt finishes in the background and rolls back
    assert lite.bo.count_rows("refunds", lite.tenant) == 0
    assert lite.bo.count_rows("tool_ledger", lite.tenant) == 0
    retried = lite.runner().call("issue_refund", REFUND, lite.ctx(key))
    assert retried.ok and not retried.replayed
    assert lite.bo.count_rows("refunds", lite.tenant) == 1


def _failing(times: int, exc: Callable[[], BaseException] = lambda: TransientToolError("flaky")) -> Callable[[str, int], None]:
    def hook(tool: str, attempt: int) -> None:
        if attempt <= times:
            raise exc()

    return hook


def test_transient_errors_retry_then_succeed(env: Env) -> None:
    runner = env.runner(fault_hook=_failing(2))
    result = runner.call("issue_refund", REFUND, env.ctx(_key()))
    assert (result.ok, result.attempts) == (True, 3)
    assert env.bo.count_rows("refunds", env.tenant) == 1


def test_database_busy_is_transient(lite: Env) -> None:
    runner = lite.runner(fault_hook=_failing(1, lambda: sqlite3.OperationalError("database is locked")))
    result = runner.call("get_order", {"order_id": "O-5001"}, lite.ctx())
    assert (result.ok, result.attempts) == (True, 2)


def test_retries_exhausted(lite: Env) -> None:
    runner = lite.runner(fault_hook=_failing(99), max_retries=2)
    result = runner.call("issue_refund", REFUND, lite.ctx(_key()))
    assert (result.ok, result.error_code, result.attempts) == (False, "transient_failure", 3)
    assert lite.bo.count_rows("refunds", lite.tenant) == 0
    assert lite.bo.count_rows("tool_ledger", lite.tenant) == 0


def test_unexpected_errors_leak_nothing(lite: Env) -> None:
    secret = "SELECT password FROM users WHERE token='sk-live-123'"
    runner = lite.runner(fault_hook=_failing(99, lambda: RuntimeError(secret)))
    result = runner.call("get_order", {"order_id": "O-5001"}, lite.ctx())
    assert (result.ok, result.error_code, result.attempts) == (False, "internal_error", 1)
    for text in ("SELECT", "sk-live", "Traceback", "RuntimeError"):
        assert text not in result.model_dump_json()


def test_results_are_json_and_frozen(lite: Env) -> None:
    result = lite.runner().call("track_shipment", {"order_id": "O-5001"}, lite.ctx())
    assert ToolResult.model_validate_json(result.model_dump_json()) == result
    with pytest.raises(Exception):
        result.ok = False  # type: ignore[misc]


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError):
        ToolRunner(BackOffice(Database("sqlite:///:memory:")))
