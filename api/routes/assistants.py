"""Assistants as LangGraph Server has them: each graph's default assistant (read-only,
shared by every tenant) and the tenant's own (:mod:`engine.assistants`): create, patch (a
new version), delete, search, count, versions, set latest; graph, schemas, subgraphs.

An assistant carries its own ``config`` (what a run's ``config`` may set: recursion
limit, tags, metadata) and ``context`` (for a graph whose context the client may set; the
support graph's context is keel's own, refused with 422). Runs started with it record the
assistant and its version. Creating and changing assistants is the admin's; everyone of
the tenant reads them; another tenant's are invisible (404).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from api.deps import ApiState, get_principal, get_runtime, get_state, require_roles
from api.errors import http_error
from api.models import (
    AssistantCount,
    AssistantCreate,
    AssistantLatest,
    AssistantOut,
    AssistantPatch,
    AssistantSchemasOut,
    AssistantSearch,
    AssistantVersions,
    returns,
)
from api.services import assistant_out, is_uuid, resolve_assistant
from engine.assistants import AssistantExists
from engine.registry import graph_ids
from engine.run_context import client_context_refusal
from keel.principals import Principal

NO_CLIENT_CONFIG = {"properties": {}, "title": "LangGraphConfig", "type": "object"}
"""The ``config_schema`` of every assistant (what LangGraph derives for a graph without a
context schema): no client-settable keys."""

router = APIRouter(tags=["assistants"])

ADMIN = ("admin",)


def _out(a: dict[str, Any]) -> dict[str, Any]:
    """A stored assistant (or version) shaped like LangGraph Server's."""
    out = {k: a.get(k) for k in ("assistant_id", "graph_id", "config", "context", "metadata", "version", "name",
                                 "description", "created_at")}
    out["updated_at"] = a.get("updated_at") or a.get("created_at")
    return out


def _all(st: ApiState, p: Principal) -> list[dict[str, Any]]:
    return [assistant_out(g) for g in graph_ids()] + [_out(a) for a in st.runtime.assistants.all(p.tenant)]


def _matching(st: ApiState, p: Principal, body: AssistantSearch | AssistantCount) -> list[dict[str, Any]]:
    out = _all(st, p)
    if body.graph_id:
        out = [a for a in out if a["graph_id"] == body.graph_id]
    if body.name:
        out = [a for a in out if body.name.lower() in a["name"].lower()]
    if body.metadata:
        out = [a for a in out if all(a["metadata"].get(k) == v for k, v in body.metadata.items())]
    return out


def _own_or_404(st: ApiState, p: Principal, assistant_id: str, *, writing: bool = False) -> dict[str, Any]:
    """The tenant's own assistant; a default one is read-only (409 when writing)."""
    aid, _ = resolve_assistant(assistant_id, st.runtime, p.tenant)
    own = st.runtime.assistants.get(p.tenant, aid)
    if own is None:
        if writing:
            raise http_error(409, "read_only_assistant", "a graph's default assistant cannot be changed; create an "
                             "assistant for the graph and change that one")
        raise http_error(404, "assistant_not_found", f"assistant {assistant_id!r} not found")
    return own


def _check(st: ApiState, graph_id: str, context: dict[str, Any] | None) -> str:
    """A graph keel serves (422: it is a field of the request) and a context it can take (422)."""
    if graph_id not in graph_ids():
        raise http_error(422, "unknown_graph", f"graph_id {graph_id!r} is not a graph keel serves "
                         f"({', '.join(graph_ids())})")
    gid = graph_id
    reason = client_context_refusal(st.runtime, gid, context)
    if reason is not None:
        raise http_error(422, "invalid_context", reason)
    return gid


@router.post("/assistants", summary="Create an assistant", **returns(AssistantOut))
def create_assistant(body: AssistantCreate, st: ApiState = Depends(get_state),
                     p: Principal = Depends(require_roles(*ADMIN))) -> dict[str, Any]:
    """An assistant of the caller's tenant for ``graph_id``, at version 1 (``if_exists``:
    ``raise`` → 409, ``do_nothing`` → the existing one)."""
    gid = _check(st, body.graph_id, body.context)
    if body.assistant_id is not None and not is_uuid(body.assistant_id):
        raise http_error(422, "invalid_assistant_id", "assistant_id must be a UUID")
    try:
        made = st.runtime.assistants.create(
            p.tenant, p.user_id, graph_id=gid, assistant_id=body.assistant_id, name=body.name or gid,
            description=body.description, config=body.config.model_dump(exclude_none=True) if body.config else {},
            context=body.context, metadata=body.metadata)
    except AssistantExists:
        existing = st.runtime.assistants.get(p.tenant, body.assistant_id or "")
        if body.if_exists == "do_nothing" and existing is not None:
            return _out(existing)
        raise http_error(409, "assistant_exists", "assistant already exists") from None
    return _out(made)


@router.post("/assistants/search", summary="Search assistants", **returns(list[AssistantOut | dict[str, Any]]))
def search_assistants(body: AssistantSearch, response: Response, st: ApiState = Depends(get_state),
                      p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """The graphs' default assistants and the tenant's own, filtered by graph id, name
    substring or metadata."""
    out = _matching(st, p, body)
    if body.sort_by:
        out.sort(key=lambda a: str(a[body.sort_by]), reverse=body.sort_order == "desc")
    page = out[body.offset: body.offset + body.limit]
    if body.offset + body.limit < len(out):
        response.headers["X-Pagination-Next"] = str(body.offset + body.limit)
    if body.select:
        page = [{k: v for k, v in a.items() if k in body.select} for a in page]
    return page


@router.post("/assistants/count", summary="Count assistants")
def count_assistants(body: AssistantCount | None = None, st: ApiState = Depends(get_state),
                     p: Principal = Depends(get_principal)) -> int:
    """Number of assistants matching the same filters as search."""
    return len(_matching(st, p, body or AssistantCount()))


@router.get("/assistants/{assistant_id}", summary="Get an assistant", **returns(AssistantOut))
def get_assistant(assistant_id: str, st: ApiState = Depends(get_state),
                  p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """By assistant id (or, for a default assistant, graph id)."""
    aid, gid = resolve_assistant(assistant_id, st.runtime, p.tenant)
    own = st.runtime.assistants.get(p.tenant, aid)
    return _out(own) if own is not None else assistant_out(gid)


@router.patch("/assistants/{assistant_id}", summary="Update an assistant (a new version)", **returns(AssistantOut))
def patch_assistant(assistant_id: str, body: AssistantPatch, st: ApiState = Depends(get_state),
                    p: Principal = Depends(require_roles(*ADMIN))) -> dict[str, Any]:
    """A new version with the given fields changed (metadata merged); it becomes current."""
    own = _own_or_404(st, p, assistant_id, writing=True)
    changes = body.model_dump(exclude_unset=True)
    gid = _check(st, changes.get("graph_id") or own["graph_id"],
                 changes["context"] if "context" in changes else own["context"])
    if "graph_id" in changes:
        changes["graph_id"] = gid
    if "config" in changes:
        changes["config"] = body.config.model_dump(exclude_none=True) if body.config else {}
    if "context" in changes:
        changes["context"] = changes["context"] or {}
    out = st.runtime.assistants.patch(p.tenant, own["assistant_id"], p.user_id, changes)
    if out is None:
        raise http_error(404, "assistant_not_found", f"assistant {assistant_id!r} not found")
    return _out(out)


@router.delete("/assistants/{assistant_id}", status_code=204, summary="Delete an assistant")
def delete_assistant(assistant_id: str, st: ApiState = Depends(get_state),
                     p: Principal = Depends(require_roles(*ADMIN))) -> Response:
    """Delete the assistant and its versions (its runs keep their record of it)."""
    own = _own_or_404(st, p, assistant_id, writing=True)
    st.runtime.assistants.delete(p.tenant, own["assistant_id"])
    return Response(status_code=204)


@router.post("/assistants/{assistant_id}/versions", summary="List an assistant's versions",
             **returns(list[AssistantOut]))
def list_versions(assistant_id: str, body: AssistantVersions, st: ApiState = Depends(get_state),
                  p: Principal = Depends(get_principal)) -> list[dict[str, Any]]:
    """Newest first; a default assistant has its one version."""
    aid, gid = resolve_assistant(assistant_id, st.runtime, p.tenant)
    if st.runtime.assistants.get(p.tenant, aid) is None:
        return [assistant_out(gid)][body.offset: body.offset + body.limit]
    return [_out(v) for v in st.runtime.assistants.versions(p.tenant, aid, metadata=body.metadata,
                                                            limit=body.limit, offset=body.offset)]


@router.post("/assistants/{assistant_id}/latest", summary="Set an assistant's current version", **returns(AssistantOut))
def set_latest(assistant_id: str, body: AssistantLatest, st: ApiState = Depends(get_state),
               p: Principal = Depends(require_roles(*ADMIN))) -> dict[str, Any]:
    """Runs started from now on use ``version``."""
    own = _own_or_404(st, p, assistant_id, writing=True)
    out = st.runtime.assistants.set_latest(p.tenant, own["assistant_id"], body.version)
    if out is None:
        raise http_error(404, "version_not_found", f"assistant has no version {body.version}")
    return _out(out)


@router.get("/assistants/{assistant_id}/graph", summary="Drawable graph")
def get_assistant_graph(assistant_id: str, xray: bool | int = False, st: ApiState = Depends(get_state),
                        p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Nodes and edges (for LangGraph Studio; ``xray`` draws subgraphs too)."""
    g = st.runtime.graph(resolve_assistant(assistant_id, st.runtime, p.tenant)[1])
    return g.get_graph(xray=xray).to_json()


def _state_schema(g: Any, which: str = "state_schema") -> dict[str, Any] | None:
    """The graph's full state (every key of its state schema, not just the input), as JSON
    schema; a key whose type pydantic cannot describe is shown as any value. ``which`` names
    another of the builder's schemas (``input_schema``, ``output_schema``): the fallback when
    LangGraph cannot describe them itself (a ``typing.TypedDict`` on Python 3.11), so Studio
    still gets an input form."""
    from typing import get_type_hints

    from pydantic import TypeAdapter, create_model

    schema = getattr(getattr(g, "builder", None), which, None)
    if schema is None:
        return None
    try:
        return TypeAdapter(schema).json_schema()
    except Exception:  # noqa: BLE001 - e.g. typing.TypedDict on 3.11: describe it key by key
        pass
    try:
        hints = get_type_hints(schema, include_extras=False)
    except Exception:  # noqa: BLE001 - unresolvable annotations: no schema, not an error
        return None
    fields: dict[str, Any] = {}
    for name, hint in hints.items():
        try:
            TypeAdapter(hint).json_schema()
            fields[name] = (hint | None, None)
        except Exception:  # noqa: BLE001
            fields[name] = (Any, None)
    return create_model(getattr(schema, "__name__", "State"), **fields).model_json_schema()


def _schemas(g: Any, graph_id: str, client_context: bool = True) -> dict[str, Any]:
    def safe(fn: Any) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 - as above
            return None

    return {
        "graph_id": graph_id,
        "input_schema": safe(g.get_input_jsonschema) or _state_schema(g, "input_schema"),
        "output_schema": safe(g.get_output_jsonschema) or _state_schema(g, "output_schema"),
        "state_schema": _state_schema(g),
        # a client configures nothing through ``configurable``: workers pass none of its keys on
        "config_schema": NO_CLIENT_CONFIG,
        # a context keel builds (the support graph's) is not the client's to send: no schema
        "context_schema": safe(g.get_context_jsonschema) if client_context and getattr(g, "context_schema", None)
        else None,
    }


@router.get("/assistants/{assistant_id}/schemas", summary="Graph schemas", **returns(AssistantSchemasOut))
def get_assistant_schemas(assistant_id: str, runtime: Any = Depends(get_runtime), st: ApiState = Depends(get_state),
                          p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Input, output, state, config and context JSON schemas."""
    gid = resolve_assistant(assistant_id, st.runtime, p.tenant)[1]
    keels = client_context_refusal(runtime, gid, {"_": None}) or ""
    return _schemas(runtime.graph(gid), gid, client_context="keel's own" not in keels)


@router.get("/assistants/{assistant_id}/subgraphs", summary="Subgraphs and their schemas")
def get_subgraphs(assistant_id: str, recurse: bool = False, st: ApiState = Depends(get_state),
                  p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """``{namespace: schemas}`` of the graph's subgraphs (empty for a graph without any)."""
    gid = resolve_assistant(assistant_id, st.runtime, p.tenant)[1]
    return {ns: _schemas(sub, gid) for ns, sub in st.runtime.graph(gid).get_subgraphs(recurse=recurse)}


@router.get("/assistants/{assistant_id}/subgraphs/{namespace}", summary="Subgraphs under a namespace")
def get_subgraphs_at(assistant_id: str, namespace: str, recurse: bool = False, st: ApiState = Depends(get_state),
                     p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """``{namespace: schemas}`` of the subgraphs under ``namespace``."""
    gid = resolve_assistant(assistant_id, st.runtime, p.tenant)[1]
    return {ns: _schemas(sub, gid)
            for ns, sub in st.runtime.graph(gid).get_subgraphs(namespace=namespace, recurse=recurse)}
