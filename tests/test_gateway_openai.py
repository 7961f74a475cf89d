"""The OpenAI provider's plumbing, offline: a fake chat model stands in for ChatOpenAI and
goes through langchain's real ``with_structured_output(include_raw=True)`` path."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from gateway import GatewayCall, LocalProvider, ModelGateway, OpenAIProvider, PlanningInput, SYSTEM_PROMPTS
from gateway import openai_provider as openai_module
from keel.types import Extraction, Ticket, TriageResult
from tools.registry import cards

TICKET = Ticket(id="T-8", tenant="acme", customer_id="C-1002", subject="Refund for O-5002",
                body="The espresso machine from order O-5002 stopped heating. I'd like a full refund please.")


class FakeToolChatModel(BaseChatModel):
    """Answers every call with the next scripted reply, as a tool call to the bound schema.

    A reply is ``{"args": {...}}`` (a tool call), ``{"content": "..."}`` (plain text), or an
    exception instance to raise. Usage metadata is attached like OpenAI's.
    """

    replies: list[Any]
    received: list[list[BaseMessage]] = []
    tool_names: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "fake-tool-chat"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> FakeToolChatModel:
        self.tool_names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.received.append(list(messages))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        calls = []
        if "args" in reply:
            calls = [{"name": self.tool_names[0], "args": reply["args"], "id": "call_1", "type": "tool_call"}]
        message = AIMessage(
            content=reply.get("content", ""),
            tool_calls=calls,
            usage_metadata={"input_tokens": 321, "output_tokens": 45, "total_tokens": 366},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def _provider(*replies: Any) -> tuple[OpenAIProvider, FakeToolChatModel]:
    fake = FakeToolChatModel(replies=list(replies), received=[], tool_names=[])
    return OpenAIProvider(chat_model=fake), fake


def test_structured_output_is_parsed_and_usage_reported() -> None:
    provider, fake = _provider({"args": {"route": "billing", "confidence": 0.88, "intents": ["refund"]}})
    calls: list[GatewayCall] = []
    result = ModelGateway([provider, LocalProvider()], on_call=calls.append).triage(TICKET)
    assert result == TriageResult(route="billing", confidence=0.88, intents=["refund"])
    assert [(c.provider, c.ok, c.tokens_in, c.tokens_out) for c in calls] == [("openai", True, 321, 45)]
    assert fake.tool_names == ["TriageResult"]
    system, human = fake.received[0]
    assert isinstance(system, SystemMessage) and system.content == SYSTEM_PROMPTS["triage"]
    assert isinstance(human, HumanMessage)
    assert json.loads(human.content)["ticket"]["body"] == TICKET.body  # ticket travels as data


def test_invalid_structured_output_falls_back_to_local() -> None:
    provider, _ = _provider({"args": {"route": "refund-desk", "confidence": "very"}})
    calls: list[GatewayCall] = []
    result = ModelGateway([provider, LocalProvider()], on_call=calls.append).triage(TICKET)
    assert result == LocalProvider().triage(TICKET)
    assert [(c.provider, c.ok, c.error) for c in calls] == [("openai", False, "invalid_output"), ("local", True, None)]
    assert calls[0].tokens_in == 321  # the failed attempt is still charged


def test_plain_text_reply_is_rejected() -> None:
    provider, _ = _provider({"content": "Sure! I refunded the order for you."})
    calls: list[GatewayCall] = []
    ModelGateway([provider, LocalProvider()], on_call=calls.append).triage(TICKET)
    assert calls[0].error == "invalid_output"


def test_json_content_without_tool_call_is_validated() -> None:
    provider, _ = _provider({"content": json.dumps({"operation": "refund", "order_id": "O-5002", "full_refund": True})})
    raw, usage = provider.complete("extract", Extraction, "sys", {"ticket": TICKET.model_dump()})
    assert raw == {"operation": "refund", "order_id": "O-5002", "full_refund": True}
    assert usage.tokens_out == 45


def test_model_extraction_and_plan_through_the_gateway() -> None:
    provider, _ = _provider(
        {"args": {"operation": "refund", "order_id": "O-5002", "full_refund": True}},
        {"args": {"actions": [{"tool": "issue_refund", "args": {"order_id": "O-5002", "amount_cents": 8999}}],
                  "rationale": "full refund of the remainder"}},
    )
    gateway = ModelGateway([provider, LocalProvider()])
    extraction = gateway.extract(TICKET, "billing")
    assert extraction.order_id == "O-5002" and extraction.full_refund
    plan = gateway.plan(
        PlanningInput(
            ticket=TICKET, route="billing", extraction=extraction, allowlist=["get_order", "issue_refund"], tools=list(cards(["get_order", "issue_refund"]).values()),
            orders=[{"id": "O-5002", "customer_id": "C-1002", "status": "delivered", "total_cents": 8999, "refunded_cents": 0}],
        )
    )
    assert plan.actions[0].args == {"order_id": "O-5002", "amount_cents": 8999}


def test_a_model_plan_outside_the_allowlist_falls_back() -> None:
    provider, _ = _provider({"args": {"actions": [{"tool": "cancel_subscription", "args": {"subscription_id": "S-1", "at": "immediate"}}]}})
    calls: list[GatewayCall] = []
    plan = ModelGateway([provider, LocalProvider()], on_call=calls.append).plan(
        PlanningInput(
            ticket=TICKET, route="billing", extraction=Extraction(operation="refund", order_id="O-5002", full_refund=True),
            allowlist=["issue_refund"], tools=list(cards(["issue_refund"]).values()),
            orders=[{"id": "O-5002", "customer_id": "C-1002", "status": "delivered", "total_cents": 8999, "refunded_cents": 0}],
        )
    )
    assert [a.tool for a in plan.actions] == ["issue_refund"]
    assert [c.provider for c in calls] == ["openai", "local"]


def test_model_errors_fall_back() -> None:
    provider, _ = _provider(ConnectionError("endpoint unreachable"))
    calls: list[GatewayCall] = []
    assert ModelGateway([provider, LocalProvider()], on_call=calls.append).triage(TICKET).route == "billing"
    assert calls[0].error == "provider_error:ConnectionError"


def test_chat_openai_is_built_once_from_settings_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Construction plumbing without a network: ChatOpenAI is replaced by a recorder."""
    built: list[dict[str, Any]] = []

    def fake_chat_openai(**kwargs: Any) -> FakeToolChatModel:
        built.append(kwargs)
        return FakeToolChatModel(replies=[{"args": {"route": "knowledge", "confidence": 0.9}}], received=[], tool_names=[])

    import langchain_openai

    monkeypatch.setattr(langchain_openai, "ChatOpenAI", fake_chat_openai)
    provider = OpenAIProvider(model="gpt-test", base_url="http://llm.invalid/v1", api_key="sk-secret", timeout=7.5)
    for _ in range(2):
        raw, _usage = provider.complete("triage", TriageResult, "sys", {"ticket": TICKET.model_dump()})
        assert raw == {"route": "knowledge", "confidence": 0.9}  # the gateway validates, not the provider
    assert len(built) == 1
    kwargs = built[0]
    assert (kwargs["model"], kwargs["base_url"], kwargs["timeout"]) == ("gpt-test", "http://llm.invalid/v1", 7.5)
    assert kwargs["api_key"].get_secret_value() == "sk-secret"
    assert "sk-secret" not in repr(provider)


def test_usage_defaults_to_zero_when_not_reported() -> None:
    assert openai_module._usage(AIMessage(content="")).model_dump() == {"tokens_in": 0, "tokens_out": 0}
    assert openai_module._usage(None).model_dump() == {"tokens_in": 0, "tokens_out": 0}
