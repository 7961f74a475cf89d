"""Any OpenAI-compatible chat model (OpenAI, vLLM, Ollama, llama.cpp) through langchain-openai.

The provider only transports: it sends the system prompt and the JSON payload, and hands
back whatever the model produced (the parsed JSON object, or ``{}`` when nothing usable
came back) with the token usage. The gateway validates it; a malformed answer is rejected
there and the next model of the chain is tried.

What the servers users run need, and why each is here:

- ``max_tokens`` on every call (:class:`CallOptions`): without it a small model can
  generate for minutes. Sent as ``max_tokens`` (what llama.cpp, Ollama and vLLM read) or
  ``max_completion_tokens`` (OpenAI's newer models), a setting per model.
- A wire schema without value constraints (:func:`wire_schema`): ``maxLength``,
  ``pattern``, ``format`` and friends crash or stall some grammar builders (llama.cpp's
  crashed its server on the plan schema). The gateway re-validates every answer with the
  full pydantic schema, so the constraints are still enforced, after the answer.
- The structured-output method per model: ``json_schema`` (``response_format``),
  ``function_calling`` (one forced tool call) or ``json_mode`` (``json_object`` plus the
  schema in the prompt) — servers support different subsets.
- No client-side retries and a timeout per call: the gateway decides retries and
  timeouts per task so a failing chain fits in the run's wall-clock cap.
- Streaming (``stream=True``): the answer arrives as SSE chunks that LangGraph's
  ``messages`` stream shows as they come; a truncated stream does not parse and is invalid.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, SecretStr

from gateway.base import Usage

__all__ = ["OpenAIProvider", "CallOptions", "wire_schema", "UNSUPPORTED_KEYWORDS"]

UNSUPPORTED_KEYWORDS = frozenset({
    "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "minProperties", "maxProperties", "title",
})
"""JSON Schema keywords left off the wire: value constraints that grammar-based servers
reject or mishandle (pydantic checks them on the answer instead), and titles (noise)."""


@dataclass(frozen=True)
class CallOptions:
    """Per-call limits the gateway sets from the routing file's task limits."""

    max_tokens: int | None = None
    timeout_s: float | None = None


def wire_schema(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """``schema``'s JSON Schema as a server can take it: constraints and titles removed.

    Property *names* are kept even when a property is called ``title`` or ``format``:
    only keywords are stripped, never the keys of ``properties``."""
    raw = schema.model_json_schema() if isinstance(schema, type) else schema
    return _strip(raw)


def _strip(node: Any, *, in_properties: bool = False) -> Any:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if not in_properties and key in UNSUPPORTED_KEYWORDS:
            continue
        out[key] = _strip(value, in_properties=key in ("properties", "$defs", "definitions") and not in_properties)
    return out


class OpenAIProvider:
    """:class:`~gateway.base.ModelProvider` backed by ``ChatOpenAI``.

    The chat model is built on first use (once per timeout), so a missing key or an
    unreachable endpoint is a failed call (recorded, then the next model runs) rather than
    a crash at start-up. Tests inject ``chat_model`` (any ``BaseChatModel`` with tool
    binding) or point ``base_url`` at the chat-completions test server.
    """

    name = "openai"
    streams_callbacks = True
    """Its chat model reports to LangChain's callbacks itself (the gateway does not stream it again)."""
    accepts_options = True
    """``complete`` takes :class:`CallOptions` (the gateway passes the task's limits)."""

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = 20.0,
        max_retries: int = 0,
        method: str = "function_calling",
        stream: bool = False,
        max_tokens_param: str = "max_tokens",
        name: str | None = None,
        chat_model: BaseChatModel | None = None,
        temperature: float = 0.0,
    ) -> None:
        if method not in ("json_schema", "function_calling", "json_mode"):
            raise ValueError(f"unknown structured-output method {method!r}")
        if name:
            self.name = name
        self.model = model
        self.base_url = base_url
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.method = method
        self.stream = stream
        self.max_tokens_param = max_tokens_param
        self.temperature = temperature
        """Sampling temperature (0: the answer the cache may reuse, see :mod:`gateway.cache`)."""
        self._injected = chat_model
        self._chats: dict[float, BaseChatModel] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    @property
    def identity(self) -> str:
        """What the circuit breaker keys on: the endpoint and the model."""
        return f"{self.base_url or 'openai'}|{self.model}"

    def _chat_model(self, timeout: float | None = None) -> BaseChatModel:
        """The chat model for this timeout, built once (thread-safe)."""
        if self._injected is not None:
            return self._injected
        timeout = round(timeout if timeout is not None else self.timeout, 3)
        with self._lock:
            chat = self._chats.get(timeout)
            if chat is None:
                from langchain_openai import ChatOpenAI

                chat = self._chats[timeout] = ChatOpenAI(
                    model=self.model,
                    base_url=self.base_url,
                    api_key=self._api_key,
                    timeout=timeout,
                    max_retries=self.max_retries,
                    temperature=self.temperature,
                    stream_usage=True,
                )
            return chat

    def complete(
        self, task: str, schema: type[BaseModel], system: str, payload: dict[str, Any],
        options: CallOptions | None = None,
    ) -> tuple[dict[str, Any] | BaseModel, Usage]:
        """Ask the model for ``schema``; return its JSON object (``{}`` if none) and the usage."""
        options = options or CallOptions()
        chat = self._chat_model(options.timeout_s)
        wire = wire_schema(schema)
        tool_name = schema.__name__
        if self.method == "json_mode":
            system = f"{system}\nNo tool is provided: answer with one JSON object only, matching this JSON Schema: {json.dumps(wire)}"
        elif self.method == "json_schema":
            system = f"{system}\nNo tool is provided: answer with the JSON object the response format describes."
        messages: list[BaseMessage] = [
            SystemMessage(content=system),
            HumanMessage(content=json.dumps(payload, default=str, ensure_ascii=False)),
        ]
        extra: dict[str, Any] = {}
        if options.max_tokens is not None:
            if self.max_tokens_param == "max_tokens":
                extra["extra_body"] = {"max_tokens": options.max_tokens}
            else:
                extra["max_tokens"] = options.max_tokens  # langchain-openai sends it as max_completion_tokens
        runnable: Any
        if self.method == "function_calling":
            tool = {"type": "function", "function": {
                "name": tool_name, "description": f"Record the {task} answer.", "parameters": wire}}
            runnable = chat.bind_tools([tool], tool_choice=tool_name, **extra)
        elif self.method == "json_schema":
            runnable = chat.bind(response_format={"type": "json_schema", "json_schema": {
                "name": tool_name, "schema": wire, "strict": False}}, **extra)
        else:
            runnable = chat.bind(response_format={"type": "json_object"}, **extra)
        message = _streamed(runnable, messages) if self.stream else runnable.invoke(messages)
        return _raw_output(message), _usage(message)


def _streamed(runnable: Any, messages: list[BaseMessage]) -> AIMessage:
    """The whole message of a streamed answer (chunks added up, tool-call pieces joined)."""
    total: Any = None
    for chunk in runnable.stream(messages):
        total = chunk if total is None else total + chunk
    if total is None:
        return AIMessage(content="")
    return AIMessage(content=total.content, tool_calls=list(getattr(total, "tool_calls", []) or []),
                     usage_metadata=getattr(total, "usage_metadata", None))


def _usage(raw: Any) -> Usage:
    """Token usage from the message's ``usage_metadata`` (zero when not reported: the
    gateway then charges an estimate)."""
    meta = getattr(raw, "usage_metadata", None) or {}
    return Usage(tokens_in=int(meta.get("input_tokens") or 0), tokens_out=int(meta.get("output_tokens") or 0))


def _raw_output(raw: Any) -> dict[str, Any]:
    """What the model said: the forced tool call's arguments, else the content as JSON.

    ``{}`` when there is nothing usable (plain text, a truncated stream, a JSON array),
    which the gateway rejects as an empty answer."""
    if isinstance(raw, AIMessage):
        if raw.tool_calls:
            args = raw.tool_calls[0].get("args")
            return dict(args) if isinstance(args, dict) else {}
        content = raw.content
        if isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if isinstance(content, str) and content.strip():
            text = content.strip()
            if text.startswith("```"):
                text = text.strip("`").removeprefix("json").strip()
            try:
                value = json.loads(text)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}
