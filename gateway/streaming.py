"""A model answer as a stream of tokens, for whoever runs the graph with ``messages`` or
``events`` streaming (LangGraph Server clients, Studio, ``useStream``).

The gateway's providers return whole answers; once an answer validated, the gateway
reports it through LangChain's chat-model callbacks of the node it runs in: a start, the
answer in token-sized chunks (``AIMessageChunk``), an end. LangGraph's ``messages`` stream
mode and LangChain's event stream are built on exactly these callbacks, so the local
provider's answers stream like a hosted model's. Outside a graph run (the CLI's eval, a
unit test) there are no callbacks and this does nothing. Invalid answers are never
streamed: a client sees only what the gateway accepted.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables.config import get_callback_manager_for_config
from langgraph.config import get_config

__all__ = ["stream_answer", "token_chunks"]

log = logging.getLogger("gateway")

_TOKEN = re.compile(r"\s*\S{1,16}")


def token_chunks(text: str) -> list[str]:
    """``text`` in token-sized pieces (a word, or 16 characters of a longer one) that join back to it."""
    pieces = _TOKEN.findall(text)
    tail = text[sum(map(len, pieces)):]
    if tail:
        pieces.append(tail)
    return pieces


def stream_answer(task: str, provider: str, system: str, payload: dict[str, Any], answer: Any) -> None:
    """Report one accepted answer as a streamed chat-model call of the current graph node.

    Best effort: a callback that fails is logged, never the model call's failure (the
    answer is already validated and the run's outcome must not depend on a listener)."""
    try:
        config = get_config()
    except RuntimeError:  # not inside a graph run
        return
    if not config.get("callbacks"):
        return
    try:
        _report(config, task, provider, system, payload, answer)
    except Exception:  # noqa: BLE001 - see above
        log.warning("could not stream the %s answer of %s", task, provider, exc_info=True)


def _report(config: Any, task: str, provider: str, system: str, payload: dict[str, Any], answer: Any) -> None:
    manager = get_callback_manager_for_config(config)
    text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False, default=str)
    prompt = [SystemMessage(content=system), HumanMessage(content=json.dumps(payload, ensure_ascii=False, default=str))]
    (run,) = manager.on_chat_model_start(
        {"name": f"keel-{provider}", "id": ["keel", "gateway", provider]}, [prompt], name=f"{provider}:{task}",
        invocation_params={"task": task, "provider": provider},
    )
    message_id = f"run-{run.run_id or uuid.uuid4()}"
    for piece in token_chunks(text):
        run.on_llm_new_token(piece, chunk=ChatGenerationChunk(message=AIMessageChunk(content=piece, id=message_id)))
    run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage(content=text, id=message_id))]]))
