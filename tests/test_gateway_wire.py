"""The OpenAI-compatible path against a real chat-completions server (issue 12, parts 3-4).

``tests/support/chat_server.py`` speaks the protocol over HTTP on a loopback port and the
real langchain-openai client talks to it: structured output by each method, whole and
streamed; injected 5xx, timeouts, malformed JSON, schema violations, ``{}`` answers and
truncated streams each end in the next model of the chain or the local rules, recorded
with their cause. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway import GatewayCall, LocalProvider, ModelError, ModelGateway, OpenAIProvider, PlanningInput
from gateway.base import Usage
from gateway.breaker import BreakerBoard
from gateway.gateway import gateway_from_settings
from gateway.minimize import Minimizer
from gateway.openai_provider import UNSUPPORTED_KEYWORDS, wire_schema
from gateway.routing import DEFAULT_ROUTING_PATH, RoutingTable, load_routing
from keel.config import Settings
from keel.types import Extraction, PlanProposal, Ticket, TriageResult
from tests.support.chat_server import ChatServer
from tools.registry import cards

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "keel" / "demo"
NOW = "2026-11-25T12:00:00Z"

REFUND = Ticket(id="T-8", tenant="acme", customer_id="C-1002", subject="Refund for O-5002",
                body="The espresso machine from order O-5002 stopped heating. I'd like a full refund please.")
EMAIL = Ticket(id="T-17", tenant="acme", customer_id="C-1007", subject="Change my email",
               body="Hi, Gus Lima here (phone +1 415-555-0100). Please change the email address on my account "
                    "to gus.lima@newmail.example.")
TWO = Ticket(id="T-7", tenant="acme", customer_id="C-1008", subject="Two things",
             body="Two things please: cancel order O-5019, it hasn't shipped yet, and also send me a password reset link.")


def _routing(models: dict[str, dict[str, Any]], chain: list[str], **tasks: dict[str, Any]) -> RoutingTable:
    return RoutingTable.model_validate({
        "version": "test-routing-1",
        "models": {"local": {"provider": "local"}, **models},
        "tasks": tasks,
        "rules": [{"name": "test-chain", "tasks": ["route", "extract", "plan", "answer"], "chain": chain}],
        "breaker": {"failures": 50, "cooldown_s": 60},
    })


def _gateway(srv: ChatServer, faults: dict[str, str], *, method: str = "json_schema", stream: bool = False,
             board: BreakerBoard | None = None, **tasks: dict[str, Any]) -> ModelGateway:
    """A chain of one model per fault name (in order), then keel's local rules."""
    srv.faults.update(faults)
    models = {n: OpenAIProvider(name=n, model=n, base_url=srv.base_url, api_key="sk-test", method=method,
                                stream=stream) for n in faults}
    specs = {n: {"provider": "openai", "model": n, "cost_in_per_1k": 1.0, "cost_out_per_1k": 2.0} for n in faults}
    table = _routing(specs, [*faults, "local"], **tasks)
    return ModelGateway(routing=table, models={**models, "local": LocalProvider()}, breakers=board or BreakerBoard())


def _planning(ticket: Ticket, extraction: Extraction, route: str = "billing") -> PlanningInput:
    allow = ["get_customer", "get_order", "list_payments", "issue_refund", "cancel_subscription"]
    order = {"id": "O-5002", "customer_id": "C-1002", "status": "delivered", "total_cents": 12900,
             "refunded_cents": 0, "currency": "USD", "shipping_address": "7 Oak Avenue, Springfield"}
    return PlanningInput(ticket=ticket, route=route, extraction=extraction, allowlist=allow,
                         tools=list(cards(allow).values()),
                         customer={"id": "C-1002", "name": "Ben Okafor", "email": "ben@example.com"},
                         orders=[order])


@pytest.fixture()
def srv():
    with ChatServer(delay_s=2.0) as server:
        yield server


# ---------------------------------------------------------------- the wire
def _keywords(node: Any, inside_properties: bool = False) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if not inside_properties:
                found.add(k)
            found |= _keywords(v, inside_properties=(k in ("properties", "$defs") and not inside_properties))
    elif isinstance(node, list):
        for v in node:
            found |= _keywords(v)
    return found


def test_wire_schema_drops_constraints_but_keeps_property_names() -> None:
    class Named(PlanProposal):
        pass

    for schema in (TriageResult, Extraction, PlanProposal, Ticket):
        full, wire = schema.model_json_schema(), wire_schema(schema)
        assert not _keywords(wire) & UNSUPPORTED_KEYWORDS
        assert set(wire["properties"]) == set(full["properties"])
    # a property literally called "format" or "title" survives: only keywords go
    assert set(wire_schema({"type": "object", "properties": {"format": {"type": "string", "maxLength": 3},
                                                             "title": {"type": "string"}}})["properties"]) == \
        {"format", "title"}
    assert "maxLength" in json.dumps(Ticket.model_json_schema())  # the constraint existed to begin with


@pytest.mark.slow
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
@pytest.mark.parametrize("stream", [False, True])
def test_each_structured_output_method_whole_and_streamed(srv: ChatServer, method: str, stream: bool) -> None:
    gw = _gateway(srv, {"m": "ok"}, method=method, stream=stream, route={"max_tokens": 123, "deadline_s": 5,
                                                                         "timeout_s": 4})
    calls: list[GatewayCall] = []
    assert gw.triage(REFUND, on_call=calls.append) == LocalProvider().triage(REFUND)
    (call,) = calls
    assert (call.model, call.ok, call.tokens_in, call.tokens_out, call.degraded) == ("m", True, 120, 30, False)
    assert (call.rule, call.routing, call.cost_usd) == ("test-chain", "test-routing-1", round(0.12 + 0.06, 8))
    (body,) = srv.requests
    assert body["max_tokens"] == 123 and body.get("stream", False) is stream
    sent = body.get("response_format", {}).get("json_schema", {}).get("schema") or \
        (body["tools"][0]["function"]["parameters"] if body.get("tools") else {})
    assert not _keywords(sent) & UNSUPPORTED_KEYWORDS
    if method == "function_calling":
        assert body["tool_choice"]["function"]["name"] == "TriageResult"
    elif method == "json_schema":
        assert body["response_format"]["type"] == "json_schema"
    else:
        assert body["response_format"] == {"type": "json_object"}


@pytest.mark.slow
def test_no_request_carries_a_constraint_keyword_for_any_task(srv: ChatServer) -> None:
    gw = _gateway(srv, {"m": "ok"})
    extraction = gw.extract(REFUND, "billing")
    gw.plan(_planning(REFUND, extraction))
    for body in srv.requests:
        assert not _keywords(body["response_format"]["json_schema"]["schema"]) & UNSUPPORTED_KEYWORDS
        assert body["max_tokens"] > 0


# ---------------------------------------------------------------- faults → next model
@pytest.mark.slow
@pytest.mark.parametrize(("fault", "cause", "stream"), [
    ("5xx", "provider_error:OpenAIAPIError:503", False),
    ("malformed", "invalid_output", False),
    ("violate", "invalid_output", False),
    ("empty", "invalid_output", False),
    ("truncated", "invalid_output", True),
    ("malformed", "invalid_output", True),
])
def test_a_fault_moves_to_the_next_model_with_its_cause(srv: ChatServer, fault: str, cause: str, stream: bool) -> None:
    gw = _gateway(srv, {"bad": fault, "good": "ok"}, stream=stream)
    calls: list[GatewayCall] = []
    assert gw.triage(REFUND, on_call=calls.append) == LocalProvider().triage(REFUND)
    assert [(c.model, c.ok, c.error, c.degraded) for c in calls] == [("bad", False, cause, False),
                                                                     ("good", True, None, True)]
    assert calls[0].tokens_in > 0  # a failed call still read the prompt: it is charged


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["5xx", "malformed", "violate", "empty", "truncated", "timeout"])
def test_every_fault_of_the_only_model_ends_in_the_local_rules(srv: ChatServer, fault: str) -> None:
    gw = _gateway(srv, {"bad": fault}, stream=fault == "truncated",
                  extract={"deadline_s": 1.0, "timeout_s": 0.5, "retries": 0})
    calls: list[GatewayCall] = []
    assert gw.extract(REFUND, "billing", on_call=calls.append) == LocalProvider().extract(REFUND, "billing")
    assert [c.model for c in calls] == ["bad", "local"] and calls[-1].degraded and not calls[0].ok
    assert calls[0].error


@pytest.mark.slow
def test_timeouts_and_retries_fit_in_the_task_deadline_and_are_charged(srv: ChatServer) -> None:
    gw = _gateway(srv, {"slow": "timeout"}, route={"deadline_s": 1.2, "timeout_s": 0.5, "retries": 3,
                                                   "max_tokens": 77})
    calls: list[GatewayCall] = []
    started = time.monotonic()
    assert gw.triage(REFUND, on_call=calls.append).route == "billing"
    elapsed = time.monotonic() - started
    assert elapsed < 1.2 + 0.8, elapsed  # not 4 × 0.5 s, and never 20 s × 2
    slow = [c for c in calls if c.model == "slow"]
    assert slow[0].error == "provider_error:OpenAITimeoutError"
    assert slow[-1].error in ("deadline_exceeded", "provider_error:OpenAITimeoutError")
    timed_out = [c for c in slow if c.error == "provider_error:OpenAITimeoutError"]
    assert all(c.tokens_in > 0 and c.tokens_out == 77 for c in timed_out)  # reserved output charged
    assert calls[-1].model == "local" and calls[-1].degraded


@pytest.mark.slow
def test_usage_less_answers_are_charged_an_estimate(srv: ChatServer) -> None:
    gw = _gateway(srv, {"m": "no_usage"})
    calls: list[GatewayCall] = []
    gw.triage(REFUND, on_call=calls.append)
    assert calls[0].ok and calls[0].tokens_in > 100 and calls[0].tokens_out > 5


# ---------------------------------------------------------------- the circuit breaker
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.slow
def test_breaker_stops_calling_a_dead_model_then_probes_it(srv: ChatServer) -> None:
    clock = Clock()
    board = BreakerBoard(clock=clock)
    gw = _gateway(srv, {"dead": "5xx"}, board=board)
    gw.routing = gw.routing.model_copy(update={"breaker": gw.routing.breaker.model_copy(
        update={"failures": 2, "cooldown_s": 30})})
    for _ in range(2):
        gw.triage(REFUND)
    assert len(srv.calls_to("dead")) == 2
    calls: list[GatewayCall] = []
    gw.triage(REFUND, on_call=calls.append)
    assert [(c.model, c.error) for c in calls] == [("dead", "circuit_open"), ("local", None)]
    assert calls[-1].degraded and len(srv.calls_to("dead")) == 2  # not called at all
    clock.t += 31  # half-open: one probe; the model is back
    srv.faults["dead"] = "ok"
    calls.clear()
    gw.triage(REFUND, on_call=calls.append)
    assert [(c.model, c.ok, c.degraded) for c in calls] == [("dead", True, False)]
    assert len(srv.calls_to("dead")) == 3


def test_a_failed_probe_reopens_the_breaker() -> None:
    clock = Clock()
    breaker = BreakerBoard(clock=clock).get("m", failures=1, cooldown_s=10)
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.t += 10
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.failure()
    assert breaker.state == "open"
    clock.t += 10
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


# ---------------------------------------------------------------- unusable answers
class Scripted:
    """A model provider that answers a fixed raw output (what a model might say)."""

    charges_tokens = True

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name, self.raw = name, raw

    def complete(self, task: str, schema: Any, system: str, payload: dict[str, Any]) -> tuple[Any, Usage]:
        return self.raw, Usage(tokens_in=10, tokens_out=5)


def _chain(*providers: Any) -> ModelGateway:
    models = {p.name: p for p in providers}
    table = RoutingTable.model_validate({"version": "t", "models": {
        n: {"provider": "local" if n == "local" else "openai"} for n in models},
        "rules": [{"name": "r", "tasks": ["route", "extract", "plan"], "chain": list(models)}]})
    return ModelGateway(routing=table, models=models, breakers=BreakerBoard())


def test_an_empty_plan_is_invalid_and_the_local_planner_answers() -> None:
    extraction = LocalProvider().extract(REFUND, "billing")
    planning = _planning(REFUND, extraction)
    for raw in ({}, {"actions": [], "rationale": "   "}):
        calls: list[GatewayCall] = []
        plan = _chain(Scripted("m", raw), LocalProvider()).plan(planning, on_call=calls.append)
        assert plan == LocalProvider().plan(planning) and plan.actions
        assert [(c.model, c.error) for c in calls] == [("m", "invalid_output"), ("local", None)]


def test_arguments_the_tool_rejects_move_to_the_next_model() -> None:
    extraction = LocalProvider().extract(REFUND, "billing")
    planning = _planning(REFUND, extraction)
    good = LocalProvider().plan(planning).model_dump(mode="json")
    for args in ({"order_id": "O-5002", "amount_cents": "lots"}, {"order_id": "O-5002"},
                 {"order_id": "O-5002", "amount_cents": 100, "surprise": 1}):
        bad = {"actions": [{"tool": "issue_refund", "args": args}], "rationale": "refund"}
        calls: list[GatewayCall] = []
        plan = _chain(Scripted("m1", bad), Scripted("m2", good), LocalProvider()).plan(planning, on_call=calls.append)
        assert plan.model_dump(mode="json") == good
        assert [(c.model, c.error) for c in calls] == [("m1", "invalid_output"), ("m2", None)]


def test_the_planner_is_given_each_allowed_tools_argument_schema() -> None:
    seen: list[dict[str, Any]] = []

    class Spy(Scripted):
        def complete(self, task: str, schema: Any, system: str, payload: dict[str, Any]) -> tuple[Any, Usage]:
            seen.append(payload)
            return super().complete(task, schema, system, payload)

    planning = _planning(REFUND, LocalProvider().extract(REFUND, "billing"))
    _chain(Spy("m", LocalProvider().plan(planning).model_dump(mode="json"))).plan(planning)
    tools = {t["name"]: t for t in seen[0]["tools"]}
    assert set(tools) == set(planning.allowlist)
    assert tools["issue_refund"]["input_schema"]["required"] == ["order_id", "amount_cents"]


def test_triage_reason_codes_outside_the_vocabulary_are_invalid() -> None:
    made_up = {"route": "billing", "confidence": 0.9, "reason_codes": ["vip_customer"], "intents": ["refund"]}
    calls: list[GatewayCall] = []
    result = _chain(Scripted("m", made_up), LocalProvider()).triage(REFUND, on_call=calls.append)
    assert result.reason_codes == [] and [c.error for c in calls] == ["invalid_output", None]


def test_multiple_intents_is_decided_by_code_not_by_the_model() -> None:
    single = {"route": "orders", "confidence": 0.95, "reason_codes": [], "intents": ["cancel_order"]}
    result = _chain(Scripted("m", single)).triage(TWO)
    assert (result.route, result.reason_codes) == ("unknown", ["multiple_intents"])
    two_routes = {"route": "billing", "confidence": 0.95, "reason_codes": [], "intents": ["refund", "password_reset"]}
    assert _chain(Scripted("m", two_routes)).triage(REFUND).reason_codes == ["multiple_intents"]
    claims = {"route": "billing", "confidence": 0.95, "reason_codes": ["multiple_intents"], "intents": ["refund"]}
    result = _chain(Scripted("m", claims)).triage(REFUND)
    assert (result.route, result.reason_codes) == ("billing", [])  # the model alone cannot claim it


# ---------------------------------------------------------------- personal data
@pytest.mark.slow
def test_personal_data_never_reaches_the_model_and_comes_back_in_the_answer(srv: ChatServer) -> None:
    gw = _gateway(srv, {"m": "ok"})
    extraction = gw.extract(EMAIL, "access")
    assert extraction.new_email == "gus.lima@newmail.example"  # restored from its reference
    planning = _planning(REFUND, gw.extract(REFUND, "billing"))
    gw.plan(planning)
    wire = json.dumps(srv.requests)
    for secret in ("gus.lima@newmail.example", "Gus Lima", "415-555-0100", "Ben Okafor", "ben@example.com",
                   "7 Oak Avenue"):
        assert secret not in wire, secret
    assert "O-5002" in wire and "C-1002" in wire  # keel's ids stay: the model needs them


def test_minimizer_references_round_trip() -> None:
    m = Minimizer()
    out = m.minimize({"customer": {"name": "Ana Ruiz", "email": "ana@example.com"},
                      "ticket": {"body": "Ana Ruiz here, ship O-1 to 48 Harbour Road, Apt 3, Portland, ME 04101 "
                                         "instead; card 4111 1111 1111 1111"},
                      "tools": [{"name": "get_customer"}]})
    text = json.dumps(out)
    assert "Ana Ruiz" not in text and "Harbour" not in text and "4111" not in text and "ana@" not in text
    assert out["tools"] == [{"name": "get_customer"}]
    assert m.restore({"new_address": "[address 1]"}) == {"new_address": "48 Harbour Road, Apt 3, Portland, ME 04101"}


# ---------------------------------------------------------------- routing as data
def test_bundled_routing_file_routes_by_task_risk_and_budget() -> None:
    table = load_routing(DEFAULT_ROUTING_PATH)
    assert table.version == "routing-v2"
    assert table.select("plan", risk="high").chain[0] == "strong"
    assert table.select("route").chain == ["small", "local"]
    assert table.select("plan", risk="high", remaining=1000).name == "low-budget-local"
    assert all(rule.chain[-1] == "local" for rule in table.rules)
    scaled = table.scaled_to(30)
    assert sum(scaled.limits(t).deadline_s for t in ("route", "extract", "plan")) <= 24 + 1e-9
    assert all(scaled.limits(t).timeout_s <= scaled.limits(t).deadline_s for t in ("route", "extract", "plan"))


def test_a_routing_file_naming_an_undeclared_model_is_rejected() -> None:
    with pytest.raises(ValidationError, match="undeclared"):
        RoutingTable.model_validate({"version": "x", "models": {"local": {"provider": "local"}},
                                     "rules": [{"name": "r", "tasks": ["plan"], "chain": ["gpt-9"]}]})
    with pytest.raises(ValidationError):
        RoutingTable.model_validate({"version": "x", "models": {"m": {"provider": "openai",
                                                                      "structured_output": "xml"}},
                                     "rules": [{"name": "r", "tasks": ["plan"], "chain": ["m"]}]})


def test_a_high_risk_plan_goes_to_the_strong_model_and_the_call_says_why() -> None:
    strong, small = Scripted("strong", {}), Scripted("small", {})
    table = load_routing(DEFAULT_ROUTING_PATH)
    gw = ModelGateway(routing=table, models={"strong": strong, "small": small, "local": LocalProvider()},
                      breakers=BreakerBoard(), remaining=lambda tenant: 1_000_000)
    planning = _planning(REFUND, LocalProvider().extract(REFUND, "billing"))
    calls: list[GatewayCall] = []
    gw.plan(planning, on_call=calls.append)
    assert [(c.model, c.rule, c.routing) for c in calls] == [
        ("strong", "plan-high-risk-strong", "routing-v2"), ("small", "plan-high-risk-strong", "routing-v2"),
        ("local", "plan-high-risk-strong", "routing-v2")]
    assert calls[0].cost_usd == round(10 / 1000 * 0.0025 + 5 / 1000 * 0.01, 8)


def test_a_call_that_does_not_fit_the_remaining_tokens_is_not_made() -> None:
    made: list[str] = []

    class Counting(Scripted):
        def complete(self, *a: Any) -> tuple[Any, Usage]:
            made.append(self.name)
            return super().complete(*a)

    table = _routing({"m": {"provider": "openai"}}, ["m", "local"], route={"max_tokens": 500})
    gw = ModelGateway(routing=table, models={"m": Counting("m", {}), "local": LocalProvider()},
                      breakers=BreakerBoard(), remaining=lambda tenant: 300)
    calls: list[GatewayCall] = []
    assert gw.triage(REFUND, on_call=calls.append).route == "billing"
    assert made == [] and [(c.model, c.error) for c in calls] == [("m", "budget_reserved"), ("local", None)]


def test_settings_deadlines_fit_the_policy_wall_clock(tmp_path: Path) -> None:
    gw = gateway_from_settings(Settings(model_routing=DEFAULT_ROUTING_PATH, data_dir=tmp_path), wall_clock_s=10)
    assert sum(gw.routing.limits(t).deadline_s for t in ("route", "extract", "plan")) <= 8 + 1e-9
    legacy = gateway_from_settings(Settings(model_provider="openai", data_dir=tmp_path, model_timeout_s=20),
                                   wall_clock_s=30)
    lim = legacy.routing.limits("plan")
    assert lim.timeout_s * (1 + lim.retries) <= 30 and sum(
        legacy.routing.limits(t).deadline_s for t in ("route", "extract", "plan")) <= 24 + 1e-9


def test_no_model_left_raises_a_safe_error() -> None:
    with pytest.raises(ModelError) as err:
        _chain(Scripted("m", {})).triage(REFUND)
    assert "invalid_output" in str(err.value) and REFUND.body not in str(err.value)


# ---------------------------------------------------------------- keel run through the server
def _keel_run(env: dict[str, str], data_dir: Path) -> list[dict[str, Any]]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_")}
    e.update(env, KEEL_DATA_DIR=str(data_dir))
    out = subprocess.run([sys.executable, "-m", "cli", "run", "--fixtures", str(DEMO / "fixtures.json"),
                          "--tickets", str(DEMO / "tickets.jsonl"), "--now", NOW],
                         capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _outcome(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["ticket_id"], row["route"], row["status"], row["reason_codes"],
            [(a["tool"], a["args"], a["decision"], a["state"]) for a in row["actions"]], row["answer"],
            row["citations"])


@pytest.mark.slow
def test_keel_run_through_the_server_matches_the_local_provider(srv: ChatServer, tmp_path: Path) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text(f"""version = "wire-test-1"
[models.local]
provider = "local"
[models.live]
provider = "openai"
model = "live"
base_url = "{srv.base_url}"
structured_output = "json_schema"
[models.dead]
provider = "openai"
model = "dead"
base_url = "{srv.base_url}"
structured_output = "function_calling"
[breaker]
failures = 2
cooldown_s = 600
[[rules]]
name = "live-first"
tasks = ["route", "extract", "plan", "answer"]
chain = ["live", "local"]
""")
    local = _keel_run({}, tmp_path / "local")
    env = {"KEEL_MODEL_ROUTING": str(routing), "KEEL_OPENAI_API_KEY": "sk-test"}
    model = _keel_run(env, tmp_path / "model")
    assert [_outcome(r) for r in model] == [_outcome(r) for r in local]
    assert len(srv.calls_to("live")) >= 60 and not any(r["degraded"] for r in model)
    assert all(set(r["models"].values()) == {"live"} for r in model)
    assert not any(r["degraded"] for r in local)

    # the model server dies: every row is still answered (by the local rules) and says so
    routing.write_text(routing.read_text().replace('chain = ["live", "local"]', 'chain = ["dead", "local"]'))
    srv.faults["dead"] = "5xx"
    degraded = _keel_run(env, tmp_path / "dead")
    assert [_outcome(r) for r in degraded] == [_outcome(r) for r in local]
    assert all(r["degraded"] and set(r["models"].values()) == {"local"} for r in degraded)
    assert len(srv.calls_to("dead")) == 2  # the breaker opened after two failures
