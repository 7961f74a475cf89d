"""Any OpenAI-compatible chat model through langchain-openai's structured output.

The provider only transports: it sends the system prompt and the JSON payload, and hands
back whatever the model produced (the parsed object, or the raw tool arguments when
parsing failed) with the token usage. The gateway validates it; a malformed answer is
rejected there and the next provider is tried.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, SecretStr

from gateway.base import Usage

__all__ = ["OpenAIProvider"]


class OpenAIProvider:
    """:class:`~gateway.base.ModelProvider` backed by ``ChatOpenAI``.

    The chat model is built on first use, so a missing key or unreachable endpoint is a
    failed call (recorded, then the fallback runs) rather than a crash at start-up. Tests
    inject ``chat_model`` (any ``BaseChatModel`` with tool binding) and never touch the
    network.

    ``method="function_calling"`` by default because the plan schema has free-form
    ``args`` objects, which OpenAI's strict json_schema mode rejects, and because more
    OpenAI-compatible servers support tools than response formats.
    """

    name = "openai"

    def __init__(
        self,
        *,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        timeout: float = 20.0,
        max_retries: int = 1,
        method: str = "function_calling",
        chat_model: BaseChatModel | None = None,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self._api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.method = method
        self._chat = chat_model
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"

    def _chat_model(self) -> BaseChatModel:
        """The chat model, built once (thread-safe) from the configured endpoint."""
        with self._lock:
            if self._chat is None:
                from langchain_openai import ChatOpenAI

                self._chat = ChatOpenAI(
                    model=self.model,
                    base_url=self.base_url,
                    api_key=self._api_key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                    temperature=0,
                )
            return self._chat

    def complete(
        self, task: str, schema: type[BaseModel], system: str, payload: dict[str, Any]
    ) -> tuple[dict[str, Any] | BaseModel, Usage]:
        """Ask the model for ``schema``; return its parsed or raw output and the usage."""
        runnable = self._chat_model().with_structured_output(
            schema, include_raw=True, method=self.method
        )
        messages = [
            SystemMessage(content=system),
            HumanMessage(content=json.dumps(payload, default=str, ensure_ascii=False)),
        ]
        result = runnable.invoke(messages)
        raw = result.get("raw") if isinstance(result, dict) else None
        usage = _usage(raw)
        parsed = result.get("parsed") if isinstance(result, dict) else result
        if isinstance(parsed, BaseModel):
            return parsed, usage
        return _raw_output(raw), usage


def _usage(raw: Any) -> Usage:
    """Token usage from the raw message's ``usage_metadata`` (zero when not reported)."""
    meta = getattr(raw, "usage_metadata", None) or {}
    return Usage(tokens_in=int(meta.get("input_tokens") or 0), tokens_out=int(meta.get("output_tokens") or 0))


def _raw_output(raw: Any) -> dict[str, Any]:
    """What the model said when it did not parse: tool arguments, else JSON content.

    Returned for the gateway to validate (and reject); an empty dict when there is
    nothing usable, which fails validation just the same.
    """
    if isinstance(raw, AIMessage):
        if raw.tool_calls:
            args = raw.tool_calls[0].get("args")
            return dict(args) if isinstance(args, dict) else {}
        if isinstance(raw.content, str) and raw.content.strip():
            try:
                value = json.loads(raw.content)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}
