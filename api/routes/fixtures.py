"""Fixtures: load a sandbox back office for the caller's tenant (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from api.deps import ApiState, request_correlation_id, get_state, require_roles
from api.errors import http_error
from api.models import FixturesOut, returns
from keel.principals import Principal
from tools.fixtures import Fixtures, format_validation_error

router = APIRouter(tags=["fixtures"])


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``#/$defs/…`` references replaced by the definitions: in the
    OpenAPI document such a reference would resolve against the document root, where
    there is no ``$defs`` (an unresolvable reference breaks client generators)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


@router.post(
    "/fixtures",
    summary="Load a sandbox back office (admin)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_defs(Fixtures.model_json_schema(mode="validation"))}}}},
    **returns(FixturesOut),
)
async def load_fixtures(request: Request, st: ApiState = Depends(get_state), p: Principal = Depends(require_roles("admin")),
                        cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Replaces the tenant's sandbox records (the batch contract's fixtures format, validated
    strictly as JSON: unknown fields, wrong types and dangling references are 422)."""
    from anyio import to_thread

    raw = await request.body()
    try:
        fixtures = Fixtures.model_validate_json(raw or b"null")
    except ValidationError as e:
        raise http_error(422, "invalid_fixtures", format_validation_error(e)) from None
    if fixtures.tenant != p.tenant:
        raise http_error(403, "wrong_tenant", "fixtures can only be loaded for your own tenant")

    def load() -> dict[str, int]:
        st.runtime.backoffice.load_fixtures(fixtures)
        counts = {k: len(getattr(fixtures, k)) for k in ("customers", "orders", "subscriptions", "articles")}
        st.runtime.audit.append(p.tenant, "admin", actor=p.user_id, correlation_id=cid,
                                data={"event": "fixtures_loaded", **counts})
        return counts

    return {"tenant": p.tenant, "loaded": await to_thread.run_sync(load)}
