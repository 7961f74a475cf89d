"""A run's ``context`` (LangGraph's run-scoped context, ``Runtime.context`` in nodes): keel's
own, or the client's.

A graph whose ``context_schema`` keel builds (the support graph's SupportContext: the
policy engine, the tool runner, the audit log…) runs with keel's context only; a client
cannot replace it (that would hand nodes other tools or another policy), so such a
request is refused with a reason. A graph that declares another schema gets the client's
context validated against that schema; a graph that declares none gets the client's
mapping as it is (as on LangGraph Server).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keel.errors import InvalidInput

__all__ = ["ContextRefused", "client_context_refusal", "run_context"]


class ContextRefused(InvalidInput, ValueError):
    """The client's ``context`` cannot be used for this graph (the message says why)."""


def _keel_context(runtime: Any, graph_id: str) -> tuple[bool, Any]:
    """``(keel_builds_it, context)`` of the graph."""
    try:
        ctx = runtime.context(graph_id)
    except TypeError:  # a schema keel does not build: the client's to fill
        return False, None
    return ctx is not None, ctx


def _coerce(schema: Any, value: dict[str, Any]) -> Any:
    validate = getattr(schema, "model_validate", None)
    if callable(validate):
        return validate(value)
    if dataclasses.is_dataclass(schema):
        return schema(**value)
    return dict(value)  # a TypedDict or a plain mapping


def run_context(runtime: Any, graph_id: str, client: dict[str, Any] | None) -> Any:
    """The ``context=`` to run ``graph_id`` with (the client's ``context``, if any, where allowed)."""
    keel_builds, ctx = _keel_context(runtime, graph_id)
    if keel_builds or not client:
        if client and keel_builds:
            raise ContextRefused(f"graph {graph_id!r} runs with keel's own context")
        return ctx
    schema = getattr(runtime.graph(graph_id), "context_schema", None)
    if schema is None:
        return dict(client)
    try:
        return _coerce(schema, client)
    except Exception as e:  # noqa: BLE001 - pydantic, TypeError from a dataclass: all the client's
        raise ContextRefused(f"context does not match {schema.__name__}: {str(e)[:300]}") from None


def client_context_refusal(runtime: Any, graph_id: str, client: dict[str, Any] | None) -> str | None:
    """Why the client's ``context`` cannot run ``graph_id`` (checked before a run is queued)."""
    if not client:
        return None
    try:
        run_context(runtime, graph_id, client)
    except ContextRefused as e:
        return str(e) + ("; it cannot be set per run (policy, tools and audit are the service's)"
                         if "keel's own" in str(e) else "")
    return None
