"""The gateway never trusts output: invalid or unsafe output falls through to the next
provider, every attempt is recorded, and a total failure is a safe ModelError."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from keel.config import Settings
from gateway import (
    GatewayCall,
    LocalProvider,
    ModelError,
    ModelGateway,
    OpenAIProvider,
    PlanningInput,
    Usage,
    gateway_from_settings,
)
from keel.types import Extraction, PlanProposal, Ticket, TriageResult
from tools.registry import cards

SECRET_TEXT = "ticket-text-that-must-not-leak"
TICKET = Ticket(id="T-1", tenant="acme", customer_id="C-1", subject="Refund", body="Please refund order O-1 in full.")


class Scripted:
    """A provider that returns fixed raw outputs (or raises), recording what it was sent."""

    def __init__(self, name: str, *outputs: Any, usage: Usage = Usage(tokens_in=100, tokens_out=20)) -> None:
        self.name = name
        self.outputs = list(outputs)
        self.usage = usage
        self.sent: list[tuple[str, str, dict]] = []

    def complete(self, task: str, schema: type[BaseModel], system: str, payload: dict) -> tuple[Any, Usage]:
        self.sent.append((task, system, payload))
        out = self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]
        if isinstance(out, Exception):
            raise out
        return out, self.usage


def _planning(**overrides: Any) -> PlanningInput:
    fields: dict[str, Any] = dict(
        ticket=TICKET,
        route="billing",
        extraction=Extraction(operation="refund", order_id="O-1", full_refund=True),
        allowlist=["get_order", "issue_refund"],
        orders=[{"id": "O-1", "customer_id": "C-1", "status": "delivered", "total_cents": 4000, "refunded_cents": 0}],
    )
    fields.update(overrides)
    fields.setdefault("tools", list(cards(fields["allowlist"]).values()))
    return PlanningInput(**fields)


def test_valid_output_of_the_first_provider_is_used() -> None:
    calls: list[GatewayCall] = []
    first = Scripted("primary", {"route": "billing", "confidence": 0.81, "intents": ["refund"]})
    gateway = ModelGateway([first, LocalProvider()], on_call=calls.append)
    result = gateway.triage(TICKET)
    assert result == TriageResult(route="billing", confidence=0.81, intents=["refund"])
    assert [(c.provider, c.ok, c.tokens_in, c.tokens_out, c.error) for c in calls] == [("primary", True, 100, 20, None)]
    assert calls[0].tokens == 120 and calls[0].ms >= 0
    task, system, payload = first.sent[0]
    assert task == "triage" and "untrusted customer data" in system
    assert payload["ticket"]["body"] == TICKET.body


@pytest.mark.parametrize(
    "raw",
    [
        {"route": "refunds", "confidence": 0.9},  # not a route
        {"route": "billing", "confidence": 1.7},  # out of range
        {"route": "billing", "confidence": 0.9, "approved": True},  # unknown field
        {},  # nothing
        "billing",  # not an object
        TriageResult.model_construct(route="nowhere", confidence=5.0),  # skipped validation
    ],
)
def test_invalid_output_falls_back_to_local(raw: Any) -> None:
    calls: list[GatewayCall] = []
    gateway = ModelGateway([Scripted("bad", raw), LocalProvider()], on_call=calls.append)
    result = gateway.triage(TICKET)
    assert result == LocalProvider().triage(TICKET)
    assert [(c.provider, c.ok, c.error) for c in calls] == [("bad", False, "invalid_output"), ("local", True, None)]
    assert calls[0].tokens == 120  # tokens spent on a rejected answer are still charged


def test_provider_exception_falls_back_and_is_named_by_class_only() -> None:
    calls: list[GatewayCall] = []
    gateway = ModelGateway([Scripted("down", TimeoutError(SECRET_TEXT)), LocalProvider()], on_call=calls.append)
    assert gateway.triage(TICKET).route == "billing"
    assert calls[0].error == "provider_error:TimeoutError"
    assert SECRET_TEXT not in calls[0].model_dump_json()


def test_no_valid_output_raises_a_safe_model_error() -> None:
    gateway = ModelGateway([Scripted("a", {"route": SECRET_TEXT}), Scripted("b", RuntimeError(SECRET_TEXT))])
    with pytest.raises(ModelError) as info:
        gateway.triage(TICKET)
    err = info.value
    assert err.task == "triage"
    assert [c.provider for c in err.calls] == ["a", "b"]
    assert SECRET_TEXT not in str(err)
    assert "invalid_output" in str(err) and "provider_error:RuntimeError" in str(err)


def test_extraction_outside_the_route_or_with_invented_ids_is_rejected() -> None:
    local = LocalProvider()
    for raw in (
        {"operation": "password_reset"},  # not a billing operation
        {"operation": "refund", "order_id": "O-999"},  # id not in the ticket
        {"operation": "refund", "order_id": "O-1", "amount_cents": -5},  # schema
    ):
        calls: list[GatewayCall] = []
        gateway = ModelGateway([Scripted("model", raw), local], on_call=calls.append)
        assert gateway.extract(TICKET, "billing") == local.extract(TICKET, "billing")
        assert calls[0].error == "invalid_output"


def test_email_must_come_from_the_ticket() -> None:
    ticket = TICKET.model_copy(update={"body": "Please change my email to new@mail.example"})
    gateway = ModelGateway([Scripted("model", {"operation": "change_email", "new_email": "evil@x.example"}), LocalProvider()])
    assert gateway.extract(ticket, "access").new_email == "new@mail.example"


@pytest.mark.parametrize(
    "raw",
    [
        {"actions": [{"tool": "cancel_subscription", "args": {"subscription_id": "S-1", "at": "immediate"}}]},  # not allowlisted
        {"actions": [{"tool": "issue_refund", "args": {"order_id": "O-77", "amount_cents": 100}}]},  # invented order
        {"actions": [{"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 100, "customer_id": "C-9"}}]},
        {"actions": [{"tool": "issue_refund"}]},  # schema: args missing
    ],
)
def test_unsafe_plans_are_rejected(raw: dict) -> None:
    calls: list[GatewayCall] = []
    gateway = ModelGateway([Scripted("model", raw), LocalProvider()], on_call=calls.append)
    plan = gateway.plan(_planning())
    assert plan.actions[0].model_dump() == {"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 4000}}
    assert [c.ok for c in calls] == [False, True]


def test_a_plan_may_use_ids_from_the_records() -> None:
    raw = {"actions": [{"tool": "issue_refund", "args": {"order_id": "O-1", "amount_cents": 1000}}], "rationale": "partial"}
    gateway = ModelGateway([Scripted("model", raw)])
    assert gateway.plan(_planning()) == PlanProposal.model_validate(raw)


def test_per_call_hook_and_gateway_hook_both_see_every_attempt() -> None:
    seen_gateway: list[GatewayCall] = []
    seen_call: list[GatewayCall] = []
    gateway = ModelGateway([Scripted("bad", {}), LocalProvider()], on_call=seen_gateway.append)
    gateway.triage(TICKET, on_call=seen_call.append)
    assert seen_gateway == seen_call and len(seen_call) == 2
    assert all(c.task == "triage" for c in seen_call)


def test_a_hook_that_raises_stops_the_task() -> None:
    """How a tenant token budget refuses further spending."""

    class BudgetExceeded(Exception):
        pass

    def budget(call: GatewayCall) -> None:
        raise BudgetExceeded(call.tokens)

    gateway = ModelGateway([LocalProvider()], on_call=budget)
    with pytest.raises(BudgetExceeded):
        gateway.triage(TICKET)


def test_run_returns_the_value_with_its_calls() -> None:
    gateway = ModelGateway([Scripted("bad", {}), LocalProvider()])
    result = gateway.run("triage", TriageResult, {"ticket": TICKET.model_dump()})
    assert result.value.route == "billing"
    assert [c.ok for c in result.calls] == [False, True]


def test_gateway_needs_a_provider() -> None:
    with pytest.raises(ValueError):
        ModelGateway([])


def test_gateway_from_settings_orders_providers_without_duplicates() -> None:
    assert gateway_from_settings(Settings()).provider_names == ["local"]
    settings = Settings(model_provider="openai", model_fallbacks=["local", "openai"], openai_api_key="sk-test-123")
    gateway = gateway_from_settings(settings)
    assert gateway.provider_names == ["openai", "local"]
    openai = gateway.providers[0]
    assert isinstance(openai, OpenAIProvider)
    assert "sk-test-123" not in repr(openai)
    assert openai.model == settings.openai_model and openai.timeout == settings.model_timeout_s
