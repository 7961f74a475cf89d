"""Caching model calls and read-only tool results (issue 12 part 5), ``degraded`` in the run's
state and a model server killed mid-batch (part 3).

Model calls go to the chat-completions test server (``tests/support/chat_server.py``) over
HTTP, so "no second request" is counted on the server. Tool reads go through the real
runner on a real back office; a fault hook counts the attempts the tools actually ran.
SQLite and Postgres; the Postgres model-cache check fills the cache from another process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from engine.batch import read_tickets, run_tickets
from engine.runtime import Runtime
from gateway import GatewayCall, LocalProvider, ModelGateway, OpenAIProvider
from gateway.breaker import BreakerBoard
from gateway.cache import CacheKey, ModelCache
from gateway.routing import RoutingTable
from keel.config import Settings
from keel.db import Database
from keel.types import Ticket
from tests.support.chat_server import ChatServer
from tools.backoffice import BackOffice
from tools.cache import ToolCache
from tools.catalog.billing import IssueRefundInput, IssueRefundOutput
from tools.declaration import DeclarationError, tool
from tools.fixtures import demo_fixtures, parse_fixtures_text
from tools.registry import TOOLS
from tools.runner import ToolContext, ToolRunner

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
"""The public example set (fixtures and 30 tickets), shipped with keel as its demo."""
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Clock:
    """Seconds since the epoch that a test moves forward."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _tenant() -> str:
    return f"t-{secrets.token_hex(4)}"


def _ticket(tenant: str) -> Ticket:
    return Ticket(id="T-8", tenant=tenant, customer_id="C-1002", subject="Refund for O-5002",
                  body="The espresso machine from order O-5002 stopped heating. I'd like a full refund please.")


def _sample(name: str, kind: str, tenant: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind, "tenant": tenant}) or 0.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keel.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture()
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.close()


@pytest.fixture()
def srv() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server


# ---------------------------------------------------------------- the model cache
def _routing(cache_ttl_s: float | None, temperature: float = 0.0) -> RoutingTable:
    rule: dict[str, Any] = {"name": "cached", "tasks": ["route", "extract", "plan", "answer"], "chain": ["m", "local"]}
    if cache_ttl_s is not None:
        rule["cache_ttl_s"] = cache_ttl_s
    return RoutingTable.model_validate({
        "version": "cache-test-1",
        "models": {"local": {"provider": "local"},
                   "m": {"provider": "openai", "model": "m", "temperature": temperature,
                         "cost_in_per_1k": 1.0, "cost_out_per_1k": 2.0}},
        "rules": [rule],
    })


def _gateway(base_url: str, db: Database, *, cache_ttl_s: float | None = 60, temperature: float = 0.0,
             clock: Clock | None = None) -> ModelGateway:
    model = OpenAIProvider(name="m", model="m", base_url=base_url, api_key="sk-test", method="json_schema",
                           temperature=temperature)
    cache = ModelCache(db, clock=clock or Clock())
    cache.setup()
    return ModelGateway(routing=_routing(cache_ttl_s, temperature), models={"m": model, "local": LocalProvider()},
                        breakers=BreakerBoard(), cache=cache)


def _triage_twice(gw: ModelGateway, first: Ticket, second: Ticket | None = None,
                  between: Any = None) -> list[GatewayCall]:
    calls: list[GatewayCall] = []
    a = gw.triage(first, on_call=calls.append)
    if between is not None:
        between()
    b = gw.triage(second or first, on_call=calls.append)
    assert a == b
    return calls


def test_an_identical_temperature_zero_call_is_answered_from_the_cache(srv: ChatServer, db: Database) -> None:
    tenant = _tenant()
    hits, misses = _sample("keel_cache_hits_total", "model", tenant), _sample("keel_cache_misses_total", "model", tenant)
    calls = _triage_twice(_gateway(srv.base_url, db), _ticket(tenant))
    assert len(srv.calls_to("m")) == 1  # the second call never reached the server
    first, hit = calls
    assert not first.cached and first.tokens > 0
    assert hit.cached and hit.ok and hit.tokens == 0 and hit.cost_usd == 0 and hit.model == "m" and not hit.degraded
    assert _sample("keel_cache_hits_total", "model", tenant) == hits + 1
    assert _sample("keel_cache_misses_total", "model", tenant) == misses + 1


def test_another_tenant_misses(srv: ChatServer, db: Database) -> None:
    calls = _triage_twice(_gateway(srv.base_url, db), _ticket(_tenant()), _ticket(_tenant()))
    assert len(srv.calls_to("m")) == 2 and not any(c.cached for c in calls)


def test_an_answer_expires_after_the_rules_ttl(srv: ChatServer, db: Database) -> None:
    clock = Clock()
    gw = _gateway(srv.base_url, db, cache_ttl_s=30, clock=clock)
    ticket = _ticket(_tenant())

    def later(seconds: float) -> Any:
        def move() -> None:
            clock.t += seconds
        return move

    assert [c.cached for c in _triage_twice(gw, ticket, between=later(29))] == [False, True]
    assert len(srv.calls_to("m")) == 1
    calls = _triage_twice(gw, ticket, between=later(31))  # the first of these is still a hit; then it expired
    assert [c.cached for c in calls] == [True, False]
    assert len(srv.calls_to("m")) == 2


def test_a_rule_without_cache_ttl_is_never_cached(srv: ChatServer, db: Database) -> None:
    calls = _triage_twice(_gateway(srv.base_url, db, cache_ttl_s=None), _ticket(_tenant()))
    assert len(srv.calls_to("m")) == 2 and not any(c.cached for c in calls)


def test_a_model_above_temperature_zero_is_never_cached(srv: ChatServer, db: Database) -> None:
    calls = _triage_twice(_gateway(srv.base_url, db, temperature=0.7), _ticket(_tenant()))
    assert len(srv.calls_to("m")) == 2 and not any(c.cached for c in calls)
    assert all(r["temperature"] == 0.7 for r in srv.calls_to("m"))  # the setting reaches the wire


def test_a_stored_answer_that_no_longer_passes_is_dropped_and_the_model_asked(srv: ChatServer, db: Database) -> None:
    gw = _gateway(srv.base_url, db)
    ticket = _ticket(_tenant())
    gw.triage(ticket)
    db.execute("UPDATE model_cache SET answer = ? WHERE tenant = ?",
               (json.dumps({"route": "billing", "confidence": 7}), ticket.tenant))
    calls: list[GatewayCall] = []
    gw.triage(ticket, on_call=calls.append)
    assert len(srv.calls_to("m")) == 2 and not calls[0].cached
    calls.clear()
    gw.triage(ticket, on_call=calls.append)  # the fresh answer replaced it
    assert calls[0].cached and len(srv.calls_to("m")) == 2


def test_expired_rows_are_purged(db: Database) -> None:
    clock = Clock()
    models = ModelCache(db, clock=clock)
    models.setup()
    tenant = _tenant()
    for i in range(3):
        models.put(CacheKey(tenant=tenant, model="m", task="triage", digest=f"d{i}"), {"route": "billing"}, 10 + i)
    clock.t += 11.5
    assert models.purge() >= 2  # other tests' rows on the shared database may expire too
    assert models.get(CacheKey(tenant=tenant, model="m", task="triage", digest="d2")) == {"route": "billing"}
    assert db.fetchone("SELECT COUNT(*) AS n FROM model_cache WHERE tenant = ?", (tenant,))["n"] == 1


def _fill_from_another_process(url: str, base_url: str, tenant: str) -> None:
    """Run in a child process: one triage call through a cache on ``url``."""
    database = Database(url)
    try:
        _gateway(base_url, database).triage(_ticket(tenant))
    finally:
        database.close()


@pytest.mark.postgres
def test_postgres_cache_is_shared_by_processes(srv: ChatServer, pg_url: str) -> None:
    tenant = _tenant()
    code = "import sys; from tests.test_cache import _fill_from_another_process as f; f(*sys.argv[1:])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    out = subprocess.run([sys.executable, "-c", code, pg_url, srv.base_url, tenant], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(srv.calls_to("m")) == 1
    database = Database(pg_url)
    try:
        calls: list[GatewayCall] = []
        _gateway(srv.base_url, database).triage(_ticket(tenant), on_call=calls.append)
    finally:
        database.close()
    assert [c.cached for c in calls] == [True] and len(srv.calls_to("m")) == 1


# ---------------------------------------------------------------- the tool cache
class Tools:
    """A back office under a fresh tenant and a runner with a tool cache; ``ran`` lists the
    tool attempts that really ran (the runner's fault hook sees each)."""

    def __init__(self, url: str, clock: Clock | None = None) -> None:
        self.url = url
        self.tenant = _tenant()
        self.clock = clock or Clock()
        self._open: list[Database] = []
        self._runners: list[ToolRunner] = []
        self.ran: list[str] = []
        self.bo = self.backoffice()
        self.bo.setup()
        self.load()
        self.runner = self.new_runner(self.bo)

    def backoffice(self) -> BackOffice:
        """A new Database and BackOffice on the same store (what another process has)."""
        db = Database(self.url)
        self._open.append(db)
        return BackOffice(db)

    def new_runner(self, bo: BackOffice) -> ToolRunner:
        runner = ToolRunner(bo, backoff_base_s=0.01, fault_hook=lambda name, attempt: self.ran.append(name),
                            cache=ToolCache(bo.db, clock=self.clock))
        self._runners.append(runner)
        return runner

    def load(self) -> None:
        self.bo.load_fixtures(demo_fixtures().model_copy(update={"tenant": self.tenant}))

    def ctx(self, customer: str = "C-1001", key: str | None = None) -> ToolContext:
        return ToolContext(tenant=self.tenant, customer_id=customer, user_id="u-1", allowlist=frozenset(TOOLS),
                           idempotency_key=key, correlation_id="run-1", now=NOW)

    def close(self) -> None:
        for r in self._runners:
            r.close()
        for d in self._open:
            d.close()


@pytest.fixture()
def tools_env(db_url: str) -> Iterator[Tools]:
    env = Tools(db_url)
    yield env
    env.close()


ORDER = {"order_id": "O-5001"}
REFUND = {"order_id": "O-5001", "amount_cents": 1000, "reason": "broken"}


def test_a_read_is_cached_then_invalidated_by_a_write_to_the_same_order(tools_env: Tools) -> None:
    t = tools_env
    hits = _sample("keel_cache_hits_total", "tool", t.tenant)
    first = t.runner.call("get_order", ORDER, t.ctx())
    again = t.runner.call("get_order", ORDER, t.ctx())
    assert first.ok and not first.cached and again.cached and again.output == first.output
    assert t.ran == ["get_order"]  # the tool ran once
    assert _sample("keel_cache_hits_total", "tool", t.tenant) == hits + 1
    refund = t.runner.call("issue_refund", REFUND, t.ctx(key=f"k-{uuid.uuid4().hex}"))
    assert refund.ok and refund.output["refunded_cents"] == 1000
    after = t.runner.call("get_order", ORDER, t.ctx())
    assert not after.cached and after.output["refunded_cents"] == 1000
    assert t.ran == ["get_order", "issue_refund", "get_order"]


def test_a_write_invalidates_that_customers_reads_only(tools_env: Tools) -> None:
    t = tools_env
    payments = {"customer_id": "C-1001"}
    other = {"customer_id": "C-1002"}
    t.runner.call("list_payments", payments, t.ctx())
    t.runner.call("get_customer", other, t.ctx("C-1002"))
    changed = t.runner.call("change_email", {"customer_id": "C-1001", "new_email": "ana.new@example.com"},
                            t.ctx(key=f"k-{uuid.uuid4().hex}"))
    assert changed.ok
    assert not t.runner.call("list_payments", payments, t.ctx()).cached  # the written customer's reads are stale
    assert t.runner.call("get_customer", other, t.ctx("C-1002")).cached  # another customer's stay
    fresh = t.runner.call("get_customer", {"customer_id": "C-1001"}, t.ctx())
    assert not fresh.cached and fresh.output["email"] == "ana.new@example.com"


def test_tool_results_are_per_tenant_and_expire(db_url: str) -> None:
    clock = Clock()
    a, b = Tools(db_url, clock), Tools(db_url, clock)
    try:
        assert not a.runner.call("get_order", ORDER, a.ctx()).cached
        assert not b.runner.call("get_order", ORDER, b.ctx()).cached  # same ids, another tenant
        assert a.runner.call("get_order", ORDER, a.ctx()).cached
        clock.t += TOOLS["get_order"].cache_ttl_s + 1
        assert not a.runner.call("get_order", ORDER, a.ctx()).cached
    finally:
        a.close()
        b.close()


def test_knowledge_search_is_cached_per_tenant_until_the_fixtures_are_reloaded(tools_env: Tools) -> None:
    t = tools_env
    query = {"query": "how do refunds work", "limit": 3}
    first = t.runner.call("search_kb", query, t.ctx("C-1001"))
    other_customer = t.runner.call("search_kb", query, t.ctx("C-1002"))
    assert first.ok and not first.cached and other_customer.cached and other_customer.output == first.output
    t.load()
    assert not t.runner.call("search_kb", query, t.ctx()).cached


def test_an_ownership_refusal_is_never_served_from_the_cache(tools_env: Tools) -> None:
    t = tools_env
    assert t.runner.call("get_order", ORDER, t.ctx()).ok
    refused = t.runner.call("get_order", ORDER, t.ctx("C-1002"))  # O-5001 is C-1001's
    assert not refused.ok and refused.error_code == "not_owner" and not refused.cached


def test_a_write_in_another_process_invalidates_this_ones_cache(tools_env: Tools) -> None:
    t = tools_env
    other = t.new_runner(t.backoffice())  # its own connections, as another process has
    t.runner.call("get_order", ORDER, t.ctx())
    assert other.call("get_order", ORDER, t.ctx()).cached  # shared through the database
    assert other.call("issue_refund", REFUND, t.ctx(key=f"k-{uuid.uuid4().hex}")).ok
    after = t.runner.call("get_order", ORDER, t.ctx())
    assert not after.cached and after.output["refunded_cents"] == 1000


def test_only_a_read_only_tool_may_declare_a_cache() -> None:
    refund = TOOLS["issue_refund"]
    with pytest.raises(DeclarationError, match="read-only"):
        @tool(side_effect=True, cache_ttl_s=10, verify=refund.verify, preview=refund.preview)
        def cached_write(bo: Any, tx: Any, env: Any, args: IssueRefundInput) -> IssueRefundOutput:
            raise AssertionError
    with pytest.raises(DeclarationError, match="read-only"):
        @tool(side_effect=False, cache_ttl_s=0)
        def never_fresh(bo: Any, tx: Any, env: Any, args: IssueRefundInput) -> IssueRefundOutput:
            raise AssertionError


# ---------------------------------------------------------------- through the support graph
def _routing_file(path: Path, base_url: str, *, model: str = "live", cache_ttl_s: int | None = 600) -> Path:
    cache = f"cache_ttl_s = {cache_ttl_s}\n" if cache_ttl_s else ""
    path.write_text(f"""version = "cache-graph-1"
[models.local]
provider = "local"
[models.{model}]
provider = "openai"
model = "{model}"
base_url = "{base_url}"
structured_output = "json_schema"
[breaker]
failures = 3
cooldown_s = 600
[[rules]]
name = "remote-first"
tasks = ["route", "extract", "plan", "answer"]
chain = ["{model}", "local"]
{cache}""")
    return path


def _runtime(tmp: Path, routing: Path | None = None) -> Runtime:
    settings = Settings(data_dir=tmp, now=NOW, plan_signing_key="cache-test",
                        **({"model_routing": routing, "openai_api_key": "sk-test"} if routing else {}))
    return Runtime(settings)


TRACK = Ticket(id="T-10", tenant="acme", customer_id="C-1002", channel="chat", subject="Live chat",
               body="where's my order O-5008? it was supposed to be here by now")


def test_a_rerun_ticket_hits_both_caches_and_the_audit_shows_it(srv: ChatServer, tmp_path: Path) -> None:
    rt = _runtime(tmp_path / "data", _routing_file(tmp_path / "routing.toml", srv.base_url))
    try:
        rt.backoffice.load_fixtures(demo_fixtures())
        first = run_tickets(rt, [TRACK], requester="u-1")[0]
        sent = len(srv.calls_to("live"))
        second = run_tickets(rt, [TRACK], requester="u-1")[0]
        assert sent >= 2 and len(srv.calls_to("live")) == sent  # the re-run sent the model nothing
        assert {k: v for k, v in first.items() if k != "thread_id"} == \
            {k: v for k, v in second.items() if k != "thread_id"}
        rows = rt.audit.list("acme", thread_id=second["thread_id"])
        models = [r.data for r in rows if r.kind == "model_call"]
        assert models and all(m["cached"] and m["tokens_in"] == 0 for m in models)
        tools = [r.data for r in rows if r.kind == "tool_call" and r.data.get("cached")]
        assert {t["tool"] for t in tools} >= {"get_customer", "get_order"}
        earlier = rt.audit.list("acme", thread_id=first["thread_id"])
        assert not any(r.data.get("cached") for r in earlier)
    finally:
        rt.close()


def test_a_fallback_answer_marks_the_runs_state_degraded_with_its_cause(srv: ChatServer, tmp_path: Path) -> None:
    srv.faults["dead"] = "5xx"
    rt = _runtime(tmp_path / "data", _routing_file(tmp_path / "routing.toml", srv.base_url, model="dead",
                                                   cache_ttl_s=None))
    try:
        rt.backoffice.load_fixtures(demo_fixtures())
        row = run_tickets(rt, [TRACK], requester="u-1")[0]
        values = rt.graph("support").get_state({"configurable": {"thread_id": row["thread_id"]}}).values
    finally:
        rt.close()
    assert row["degraded"] and values["degraded"] is True
    assert values["degraded_causes"] == [f"{task}:dead:provider_error:OpenAIAPIError:503"
                                         for task in ("triage", "extract", "plan")]


def test_an_undegraded_runs_state_carries_no_mark(tmp_path: Path) -> None:
    rt = _runtime(tmp_path / "data")
    try:
        rt.backoffice.load_fixtures(demo_fixtures())
        row = run_tickets(rt, [TRACK], requester="u-1")[0]
        values = rt.graph("support").get_state({"configurable": {"thread_id": row["thread_id"]}}).values
    finally:
        rt.close()
    assert not row["degraded"] and not values.get("degraded") and not values.get("degraded_causes")


# ---------------------------------------------------------------- the model server killed mid-batch
_DYING_SERVER = """
import os, sys, threading
from tests.support.chat_server import ChatServer

class Dying(ChatServer):
    def record(self, body):
        super().record(body)
        if len(self.requests) >= int(sys.argv[1]):
            os._exit(9)  # killed with this request unanswered

from gateway.rules import extract_text, triage_text
triage_text("", "warm up: please refund O-1, it arrived broken")  # word lists and patterns loaded before the
extract_text("", "warm up: please refund O-1", "billing")          # first call, which has a deadline to meet
srv = Dying().__enter__()
print(srv.base_url, flush=True)
threading.Event().wait()
"""


def _outcome(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["ticket_id"], row["route"], row["status"], row["reason_codes"],
            [(a["tool"], a["args"], a["decision"], a["state"]) for a in row["actions"]], row["answer"],
            row["citations"])


def _batch(rt: Runtime) -> list[dict[str, Any]]:
    parsed = parse_fixtures_text((DEMO / "fixtures.json").read_text(encoding="utf-8"))
    assert parsed.fixtures is not None
    rt.backoffice.load_fixtures(parsed.fixtures)
    tickets, errors = read_tickets(DEMO / "tickets.jsonl")
    assert not errors
    return run_tickets(rt, tickets, requester="keel-batch")


@pytest.mark.slow
def test_killing_the_model_server_mid_batch_loses_no_run(tmp_path: Path) -> None:
    local_rt = _runtime(tmp_path / "local")
    try:
        local = _batch(local_rt)
    finally:
        local_rt.close()

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    server = subprocess.Popen([sys.executable, "-c", _DYING_SERVER, "30"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        rt = _runtime(tmp_path / "model", _routing_file(tmp_path / "routing.toml", base_url))
        try:
            rows = _batch(rt)
            assert server.wait(timeout=5) == 9  # the server died mid-batch, not after it
            graph = rt.graph("support")
            values = [graph.get_state({"configurable": {"thread_id": r["thread_id"]}}).values for r in rows]
            audit = [rt.audit.list("acme", thread_id=r["thread_id"]) for r in rows]
            ledger = rt.backoffice.count_rows("tool_ledger", "acme")
        finally:
            rt.close()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGKILL)
            server.wait()

    # every ticket has exactly one row, in order, with the local provider's outcome
    assert [r["ticket_id"] for r in rows] == [r["ticket_id"] for r in local]
    assert len({r["thread_id"] for r in rows}) == len(rows)
    assert [_outcome(r) for r in rows] == [_outcome(r) for r in local]
    # the first tickets were answered by the model; every one after the kill by the local rules, marked
    degraded = [r["degraded"] for r in rows]
    assert not degraded[0] and degraded[-1]
    first = degraded.index(True)
    assert all(degraded[first:]), degraded
    for row, state, trail in zip(rows, values, audit):
        calls = [a.data for a in trail if a.kind == "model_call"]
        if row["degraded"]:
            assert state["degraded"] is True and state["degraded_causes"]
            assert all(c.split(":")[1] == "live" for c in state["degraded_causes"])
            assert any(c.get("error") and c.get("model") == "live" for c in calls)  # the cause is audited too
        else:
            assert not state.get("degraded") and set(row["models"].values()) == {"live"}
    # side effects exactly once: one ledger row per executed side effect, as many as the local run
    def side_effects(batch: list[dict[str, Any]]) -> int:
        return sum(a["state"] == "executed" and TOOLS[a["tool"]].side_effect for r in batch for a in r["actions"])

    assert ledger == side_effects(rows) == side_effects(local) > 0
