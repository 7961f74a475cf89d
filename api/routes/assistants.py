"""Assistants: one read-only default assistant per graph of ``langgraph.json``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import get_principal, get_runtime
from api.models import AssistantCount, AssistantOut, AssistantSchemasOut, AssistantSearch, returns
from api.services import assistant_out, resolve_assistant
from engine.registry import graph_ids
from keel.principals import Principal

NO_CLIENT_CONFIG = {"properties": {}, "title": "LangGraphConfig", "type": "object"}
"""The ``config_schema`` of every assistant (what LangGraph derives for a graph without a
context schema): no client-settable keys."""

router = APIRouter(tags=["assistants"])


def _matching(body: AssistantSearch | AssistantCount) -> list[dict[str, Any]]:
    out = [assistant_out(g) for g in graph_ids()]
    if body.graph_id:
        out = [a for a in out if a["graph_id"] == body.graph_id]
    if body.name:
        out = [a for a in out if body.name.lower() in a["name"].lower()]
    if body.metadata:
        out = [a for a in out if all(a["metadata"].get(k) == v for k, v in body.metadata.items())]
    return out


@router.post("/assistants/search", summary="Search assistants", **returns(list[AssistantOut]))
def search_assistants(body: AssistantSearch, response: Response, _: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """Assistants filtered by graph id, name substring or metadata."""
    out = _matching(body)
    if body.sort_by:
        out.sort(key=lambda a: str(a[body.sort_by]), reverse=body.sort_order == "desc")
    page = out[body.offset : body.offset + body.limit]
    if body.offset + body.limit < len(out):
        response.headers["X-Pagination-Next"] = str(body.offset + body.limit)
    return page


@router.post("/assistants/count", summary="Count assistants")
def count_assistants(body: AssistantCount | None = None, _: Principal = Depends(get_principal)) -> int:
    """Number of assistants matching the same filters as search."""
    return len(_matching(body or AssistantCount()))


@router.get("/assistants/{assistant_id}", summary="Get an assistant", **returns(AssistantOut))
def get_assistant(assistant_id: str, _: Principal = Depends(get_principal)) -> dict[str, Any]:
    """By assistant id or graph id."""
    return assistant_out(resolve_assistant(assistant_id)[1])


@router.get("/assistants/{assistant_id}/graph", summary="Drawable graph")
def get_assistant_graph(assistant_id: str, xray: bool = False, runtime: Any = Depends(get_runtime),
                        _: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Nodes and edges (for LangGraph Studio)."""
    g = runtime.graph(resolve_assistant(assistant_id)[1])
    return g.get_graph(xray=xray).to_json()


@router.get("/assistants/{assistant_id}/schemas", summary="Graph schemas", **returns(AssistantSchemasOut))
def get_assistant_schemas(assistant_id: str, runtime: Any = Depends(get_runtime),
                          _: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Input, output, state and config JSON schemas."""
    gid = resolve_assistant(assistant_id)[1]
    g = runtime.graph(gid)

    def safe(fn: Any) -> Any:
        try:
            return fn()
        except Exception:
            return None

    return {
        "graph_id": gid,
        "input_schema": safe(g.get_input_jsonschema),
        "output_schema": safe(g.get_output_jsonschema),
        "state_schema": safe(lambda: g.get_input_jsonschema()),
        # a client configures nothing: workers pass on none of its ``configurable`` keys, and a
        # graph's run context is built by keel (never sent), so both are empty
        "config_schema": NO_CLIENT_CONFIG,
        "context_schema": None,
    }
