"""keel's one error and retry vocabulary (keel.errors, keel.retry, keel.ratelimit).

- every exception class keel defines derives from KeelError;
- retries are decided by the ``retryable`` flag (and one mapping of the drivers' exceptions),
  never by a class name: the worker's classification and the tool runner's retries;
- one retry policy (backoff with equal jitter, on tenacity) and one in-process limiter;
- no decision anywhere in keel's source compares class names.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from keel.errors import BudgetExceeded, ConfigError, InvalidInput, KeelError, StoreError, is_database_outage, is_retryable
from keel.ratelimit import LocalRateLimiter
from keel.retry import Backoff, RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")
"""keel's top-level packages (keel, tools, guards, gateway, graphs, nodes, engine, api, …)."""


class AdminShutdown(psycopg.OperationalError):
    """psycopg raises a subclass like this one when the server restarts."""


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


# -- the drivers' failures: one mapping --------------------------------------------------------
@pytest.mark.parametrize("exc", [AdminShutdown("terminating connection"), sqlite3.OperationalError("locked"),
                                 _caused(RuntimeError("audit write failed"), psycopg.InterfaceError("closed"))])
def test_a_database_failure_anywhere_in_the_chain_is_an_outage_and_retryable(exc):
    assert is_database_outage(exc) and is_retryable(exc)


def test_a_model_failure_is_neither():
    exc = _caused(ValueError("invalid output"), KeyError("route"))
    assert not is_database_outage(exc) and not is_retryable(exc)


def test_a_configuration_the_database_refuses_is_not_retried():
    exc = psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "keel"')
    assert not is_retryable(exc) and not is_database_outage(exc)
    assert is_retryable(TimeoutError()) and is_retryable(ConnectionResetError())


def test_the_clients_timeouts_and_outages_are_mapped_by_type():
    import httpx
    import openai

    from keel.errors import is_timeout

    request = httpx.Request("POST", "http://model.invalid/v1/chat/completions")
    timeout, refused = openai.APITimeoutError(request=request), openai.APIConnectionError(request=request)
    assert is_retryable(timeout) and is_timeout(timeout) and is_timeout(_caused(RuntimeError("x"), httpx.ReadTimeout("t")))
    assert is_retryable(refused) and not is_timeout(refused)
    unauthorized = openai.AuthenticationError("bad key", response=httpx.Response(401, request=request), body=None)
    assert not is_retryable(unauthorized) and not is_timeout(unauthorized)
    assert not is_timeout(type("ReadTimeout", (Exception,), {})())  # the name alone says nothing


# -- retryable by type, never by name --------------------------------------------------------
def test_the_flag_decides_not_the_name_and_the_first_keel_error_in_the_chain_decides():
    class TransientError(Exception):  # named like a retryable failure: says nothing
        pass

    class OperationalError(KeelError):  # named like psycopg's: a keel error, not retryable
        pass

    class Hiccup(KeelError):
        retryable = True

    from engine.checkpoints import LeaseLost

    assert not is_retryable(TransientError("x")) and not is_retryable(OperationalError("x"))
    assert is_retryable(Hiccup()) and is_retryable(_caused(RuntimeError("x"), Hiccup()))
    assert not is_retryable(_caused(LeaseLost("lost"), TimeoutError()))  # it has the say, not its cause
    assert not is_retryable(_caused(OperationalError("x"), AdminShutdown("restart")))


def test_the_shipped_classes_say_what_they_are():
    from gateway.base import InvalidOutput, ModelError
    from nodes.execute import ToolFailure
    from tools.contracts import ToolError, TransientToolError

    assert is_retryable(ToolFailure("refund kept failing")) and is_retryable(TransientToolError())
    assert not is_retryable(ToolError("not_found", "no such order")) and not is_retryable(ModelError("triage", []))
    assert not is_retryable(InvalidOutput("bad id"))
    assert TransientToolError().code == "transient_failure" and ModelError("triage", []).code == "model_unavailable"


def _modules() -> Iterator[object]:
    for name in PACKAGES:
        pkg = importlib.import_module(name)
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, f"{name}."):
            if not info.name.endswith("__main__"):
                yield importlib.import_module(info.name)


def _exception_classes(owner: object, module: str) -> Iterator[type[BaseException]]:
    for value in vars(owner).values():
        if inspect.isclass(value) and value.__module__ == module:
            if issubclass(value, BaseException):
                yield value
            yield from _exception_classes(value, module)  # classes nested in classes


def test_every_exception_class_keel_defines_derives_from_keel_error():
    found = {cls for mod in _modules() for cls in _exception_classes(mod, mod.__name__)}
    assert len(found) >= 20, sorted(c.__qualname__ for c in found)  # the walk sees them
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, KeelError))
    assert strays == [], f"exception classes outside keel.errors' tree: {strays}"


def test_the_tree_in_keel_errors_names_every_public_class():
    import keel.errors

    found = {cls for mod in _modules() for cls in _exception_classes(mod, mod.__name__)}
    missing = sorted(c.__qualname__ for c in found
                     if not c.__name__.startswith("_") and not re.search(rf"\b{c.__name__}\b", keel.errors.__doc__ or ""))
    assert missing == [], f"add these to the tree at the top of keel/errors.py: {missing}"


_BUILTIN_EXCEPTIONS = {n for n, v in vars(builtins).items() if inspect.isclass(v) and issubclass(v, BaseException)}


def test_no_exception_class_hides_inside_a_function():
    """Classes defined in function bodies escape the import walk: none derives from a
    built-in exception alone."""
    strays = []
    for path in (p for name in PACKAGES for p in (ROOT / name).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in (n for n in ast.walk(fn) if isinstance(n, ast.ClassDef)):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases and bases <= _BUILTIN_EXCEPTIONS:
                    strays.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert strays == []


def test_the_tree_keeps_the_bases_callers_catch():
    from api.ratelimit import LocalRateLimiter as ApiLimiter
    from engine.admission import QuotaExceeded
    from engine.queue.base import NotFound, ThreadBusy
    from evals.report import EvalError
    from graphs.context import MissingContext
    from guards.approvals import ApprovalError
    from guards.pack import PolicyError
    from keel.db import IntegrityError, StartupError
    from nodes.common import TokenBudgetExceeded

    assert issubclass(PolicyError, ConfigError) and issubclass(PolicyError, ValueError)
    assert issubclass(MissingContext, ConfigError) and issubclass(MissingContext, TypeError)
    assert issubclass(EvalError, InvalidInput) and issubclass(EvalError, ValueError)
    assert issubclass(TokenBudgetExceeded, BudgetExceeded) and issubclass(QuotaExceeded, BudgetExceeded)
    assert all(issubclass(c, StoreError) for c in (IntegrityError, StartupError, NotFound, ThreadBusy))
    e = ApprovalError("stale_plan", 409, "the plan changed")
    assert (e.code, e.http_status, e.message, e.retryable) == ("stale_plan", 409, "the plan changed", False)
    assert ApiLimiter is LocalRateLimiter


_NAME_DECISIONS = [
    re.compile(r"(type\([^)]*\)|__class__)\.__name__\s*(==|!=|\bin\b|\bnot in\b|\.startswith|\.endswith)"),
    re.compile(r"(==|!=|\bin\b)\s*(type\([^)]*\)|[\w.]+\.__class__)\.__name__"),
    re.compile(r"__name__.*__mro__|__mro__.*__name__"),
    re.compile(r"getattr\([^)]*[\"']transient[\"']"),
]
"""Ways of deciding by an exception's class name (its own, its bases', a flag of another name)."""


def test_no_decision_compares_class_names():
    hits = []
    for path in (p for name in PACKAGES for p in (ROOT / name).rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(p.search(code) for p in _NAME_DECISIONS):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []


def test_the_name_check_would_catch_the_old_classification():
    old = ("return any(c.__name__ in names for c in type(e).__mro__)", "if type(e).__name__ in TRANSIENT:",
           'if "Timeout" in type(exc).__name__:', 'marked = getattr(e, "transient", None)',
           'if e.__class__.__name__ == "OperationalError":', 'if type(e).__name__.endswith("Timeout"):')
    assert [line for line in old if not any(p.search(line) for p in _NAME_DECISIONS)] == []
    fine = ('error = f"provider_error:{type(exc).__name__}"', "found = [v for v in vals if v.module == module.__name__]")
    assert [line for line in fine if any(p.search(line) for p in _NAME_DECISIONS)] == []


# -- the tool runner retries by the flag ----------------------------------------------------
@pytest.fixture
def runner_env(tmp_path):
    from keel.db import Database
    from tools.backoffice import BackOffice
    from tools.fixtures import demo_fixtures
    from tools.registry import TOOLS
    from tools.runner import ToolContext

    db = Database(f"sqlite:///{tmp_path}/bo.db")
    bo = BackOffice(db)
    bo.setup()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    bo.load_fixtures(demo_fixtures().model_copy(update={"tenant": tenant}))

    def ctx(**kw) -> ToolContext:
        return ToolContext(tenant=tenant, customer_id="C-1001", user_id="u-1", allowlist=frozenset(TOOLS),
                           correlation_id="run-1", now=datetime(2026, 11, 25, 12, tzinfo=UTC), **kw)

    runners = []

    def runner(**kw):
        from tools.runner import ToolRunner

        r = ToolRunner(bo, **{"timeout_s": 5.0, "backoff_base_s": 0.001, **kw})
        runners.append(r)
        return r

    yield bo, tenant, ctx, runner
    for r in runners:
        r.close()
    db.close()


def _hook(times: int, exc):
    seen: list[int] = []

    def hook(tool: str, attempt: int) -> None:
        seen.append(attempt)
        if attempt <= times:
            raise exc()

    return hook, seen


def test_a_retryable_tool_error_is_retried_whatever_its_name(runner_env):
    from tools.contracts import ToolError

    class Hiccup(ToolError):  # neither named nor derived like TransientToolError
        retryable = True

    _, _, ctx, runner = runner_env
    hook, seen = _hook(2, lambda: Hiccup("busy", "downstream busy"))
    result = runner(fault_hook=hook).call("get_order", {"order_id": "O-5001"}, ctx())
    assert (result.ok, result.attempts, seen) == (True, 3, [1, 2, 3])


def test_a_tool_error_named_transient_but_not_retryable_is_not_retried(runner_env):
    from tools.contracts import TransientToolError as Base

    class TransientToolError(Base):
        retryable = False

    _, _, ctx, runner = runner_env
    hook, seen = _hook(5, lambda: TransientToolError("flaky but final", code="downstream_refused"))
    result = runner(fault_hook=hook).call("get_order", {"order_id": "O-5001"}, ctx())
    assert (result.ok, result.error_code, result.attempts, seen) == (False, "downstream_refused", 1, [1])


def test_a_retryable_tool_error_inside_the_transaction_is_retried_not_recorded(runner_env):
    """A side effect's guard (run in the call's transaction) failing retryably rolls back
    and is retried; a refusal would have been recorded in the ledger instead."""
    from tools.contracts import ToolError

    class LockBusy(ToolError):
        retryable = True

    bo, tenant, ctx, runner = runner_env
    calls: list[int] = []

    def guard(tx) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise LockBusy("busy", "velocity row locked")

    key = f"plan-{uuid.uuid4().hex}"
    result = runner().call("issue_refund", {"order_id": "O-5001", "amount_cents": 1000, "reason": "broken"},
                           ctx(idempotency_key=key, guard=guard))
    assert (result.ok, result.attempts, len(calls)) == (True, 2, 2)
    assert bo.count_rows("refunds", tenant) == 1 and bo.count_rows("tool_ledger", tenant) == 1


def test_the_runner_backs_off_with_keel_s_policy(runner_env):
    """Attempts spaced by keel.retry.Backoff: retry n waits in [full/2, full], full doubling
    from the runner's base up to its cap; then ``transient_failure``."""
    from tools.contracts import TransientToolError

    _, _, ctx, runner = runner_env
    at: list[float] = []

    def hook(tool: str, attempt: int) -> None:
        at.append(time.monotonic())
        raise TransientToolError()

    result = runner(fault_hook=hook, max_retries=3, backoff_base_s=0.04, backoff_max_s=0.08).call(
        "get_order", {"order_id": "O-5001"}, ctx())
    assert (result.ok, result.error_code, result.attempts) == (False, "transient_failure", 4)
    gaps = [b - a for a, b in zip(at, at[1:])]
    for n, gap in enumerate(gaps, 1):
        full = min(0.08, 0.04 * 2 ** (n - 1))
        assert full / 2 <= gap <= full + 0.25, gaps  # scheduling slack above only


# -- the model gateway: the same model again only on a retryable failure ---------------------
class _Failing:
    """A remote model that always fails with ``exc``."""

    def __init__(self, exc: BaseException) -> None:
        self.name, self.exc, self.calls = "remote", exc, 0

    def complete(self, task, schema, system, payload):
        self.calls += 1
        raise self.exc


@pytest.mark.parametrize("exc, calls", [(TimeoutError("slow"), 2), (ConnectionResetError("reset"), 2),
                                        (RuntimeError("401: invalid api key"), 1),
                                        (type("APITimeoutError", (Exception,), {})("named like one"), 1)])
def test_the_gateway_retries_a_model_only_for_a_retryable_failure_then_falls_back(exc, calls):
    from gateway import LocalProvider, ModelGateway
    from gateway.breaker import BreakerBoard
    from gateway.routing import GATEWAY_TASK, TaskLimits, chain_routing
    from keel.types import Ticket

    ticket = Ticket(id="T-1", tenant="acme", customer_id="C-1", subject="Refund", body="Please refund order O-1.")
    table = chain_routing(["remote", "local"])
    table = table.model_copy(update={"tasks": {t: TaskLimits(retries=1) for t in GATEWAY_TASK.values()}})
    remote = _Failing(exc)
    seen = []
    gateway = ModelGateway(routing=table, models={"remote": remote, "local": LocalProvider()}, breakers=BreakerBoard(),
                           on_call=seen.append)
    assert gateway.triage(ticket) == LocalProvider().triage(ticket)  # then the next model answers
    assert remote.calls == calls, [(c.provider, c.error) for c in seen]


# -- one retry policy -----------------------------------------------------------------------
def test_backoff_doubles_up_to_its_cap_with_equal_jitter():
    rnd = random.Random(3)
    b = Backoff(base_s=1.0, cap_s=30.0)
    for retry, full in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        ds = [b.delay(retry, rnd) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in ds) and max(ds) - min(ds) > full / 4


def test_the_policy_retries_what_is_retryable_until_its_attempts_are_spent():
    class Hiccup(KeelError):
        retryable = True

    sleeps: list[float] = []
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Hiccup()
        return "ok"

    policy = RetryPolicy(Backoff(0.1, 1.0), max_attempts=3)
    assert policy.retrying(sleep=sleeps.append)(flaky) == "ok" and len(calls) == 3
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2

    calls.clear()
    with pytest.raises(Hiccup):
        RetryPolicy(Backoff(0.1, 1.0), max_attempts=2).retrying(sleep=sleeps.append)(flaky)
    assert len(calls) == 2

    def final() -> None:
        calls.append(1)
        raise KeelError("no")

    calls.clear()
    with pytest.raises(KeelError):
        policy.retrying(sleep=sleeps.append)(final)
    assert len(calls) == 1  # not retryable: raised at once


def test_the_worker_and_the_queue_use_the_same_backoff():
    from engine.queue import backoff_delay

    assert backoff_delay(3, 1.0, 30.0, random.Random(5)) == Backoff(1.0, 30.0).delay(3, random.Random(5))


# -- one in-process limiter -----------------------------------------------------------------
def test_the_limiter_allows_the_burst_then_the_sustained_rate_per_key():
    now = [0.0]
    lim = LocalRateLimiter(per_minute=60, clock=lambda: now[0])  # one a second, a minute's worth at once
    assert all(lim.allow("t") for _ in range(60)) and not lim.allow("t")
    assert lim.take("t") == pytest.approx(1.0) and lim.allow("other")
    now[0] = 2.5
    assert lim.allow("t") and lim.allow("t") and not lim.allow("t")
    assert all(LocalRateLimiter(per_minute=0).allow("k") for _ in range(100))  # 0 turns it off


def test_the_api_and_the_tool_runner_share_the_limiter(runner_env):
    import api.ratelimit

    assert isinstance(api.ratelimit.rate_limiter(object(), 5), LocalRateLimiter)
    _, _, _, runner = runner_env
    assert isinstance(runner()._limiter, LocalRateLimiter)
