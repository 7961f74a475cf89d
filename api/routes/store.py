"""LangGraph's store API (``/store/items``, ``/store/items/search``, ``/store/namespaces``)
on the same store graphs reach as ``runtime.store`` (:mod:`engine.store`).

Every caller sees only its tenant's tree: namespaces are relative to it, and another
tenant's items cannot be named, listed or searched. Everyone of the tenant reads; the
roles that start runs (requester, admin) write and delete.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Response

from api.deps import ApiState, get_principal, get_state, require_roles
from api.errors import http_error
from api.models import StoreDelete, StoreItemOut, StoreNamespaces, StorePut, StoreSearch, returns
from api.services import START_ROLES
from engine.store import TenantStore
from keel.principals import Principal

router = APIRouter(tags=["store"])


def _store(st: ApiState, p: Principal) -> TenantStore:
    return TenantStore(st.runtime.store, p.tenant)


def _item(item: Any) -> dict[str, Any] | None:
    if item is None:
        return None
    out = {"namespace": list(item.namespace), "key": item.key, "value": item.value,
           "created_at": item.created_at.isoformat(), "updated_at": item.updated_at.isoformat()}
    if hasattr(item, "score"):
        out["score"] = item.score
    return out


async def _call(fn: Any) -> Any:
    """Run a store call off the event loop; what the store refuses (a bad namespace, an
    unknown filter operator) is the request's fault: 422 with the store's reason."""
    try:
        return await to_thread.run_sync(fn)
    except (ValueError, TypeError) as e:
        raise http_error(422, "invalid_store_request", f"{type(e).__name__}: {str(e)[:300]}") from None


def _namespace(dotted: str) -> tuple[str, ...]:
    labels = tuple(dotted.split("."))
    if not dotted or any(not label for label in labels) or len(labels) > 16:
        raise http_error(422, "invalid_namespace", "namespace: 1 to 16 non-empty labels joined by '.'")
    return labels


@router.put("/store/items", status_code=204, summary="Store an item")
async def put_item(body: StorePut, st: ApiState = Depends(get_state),
                   p: Principal = Depends(require_roles(*START_ROLES))) -> Response:
    """Create or replace the item at ``namespace``/``key`` (``ttl`` in minutes)."""
    await _call(lambda: _store(st, p).put(tuple(body.namespace), body.key, body.value,
                                                       index=body.index, ttl=body.ttl))
    return Response(status_code=204)


@router.get("/store/items", summary="Get an item", **returns(StoreItemOut | None))
async def get_item(namespace: str = Query(..., max_length=4200), key: str = Query(..., min_length=1, max_length=1024),
                   refresh_ttl: bool | None = None, st: ApiState = Depends(get_state),
                   p: Principal = Depends(get_principal)) -> Any:
    """The item, or ``null`` if there is none (as LangGraph Server answers)."""
    ns = _namespace(namespace)
    item = await _call(lambda: _store(st, p).get(ns, key, refresh_ttl=refresh_ttl))
    return _item(item)


@router.delete("/store/items", status_code=204, summary="Delete an item")
async def delete_item(body: StoreDelete, st: ApiState = Depends(get_state),
                      p: Principal = Depends(require_roles(*START_ROLES))) -> Response:
    """Delete the item (nothing to do if there is none)."""
    await _call(lambda: _store(st, p).delete(tuple(body.namespace), body.key))
    return Response(status_code=204)


@router.post("/store/items/search", summary="Search items", **returns(dict[str, list[StoreItemOut]]))
async def search_items(body: StoreSearch, st: ApiState = Depends(get_state),
                       p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """Items under ``namespace_prefix`` whose values match ``filter`` (equality, or
    ``$eq``/``$ne``/``$gt``/``$gte``/``$lt``/``$lte``), ``offset``/``limit`` paged; ``query``
    ranks only on a store with an embedding index (keel configures none)."""
    items = await _call(lambda: _store(st, p).search(
        tuple(body.namespace_prefix), query=body.query, filter=body.filter, limit=body.limit, offset=body.offset,
        refresh_ttl=body.refresh_ttl))
    return {"items": [_item(i) for i in items]}


@router.post("/store/namespaces", summary="List namespaces", **returns(dict[str, list[list[str]]]))
async def list_namespaces(body: StoreNamespaces, st: ApiState = Depends(get_state),
                          p: Principal = Depends(get_principal)) -> dict[str, Any]:
    """The tenant's namespaces, filtered by ``prefix``/``suffix``, cut at ``max_depth``."""
    out = await _call(lambda: _store(st, p).list_namespaces(
        prefix=tuple(body.prefix) if body.prefix else None, suffix=tuple(body.suffix) if body.suffix else None,
        max_depth=body.max_depth, limit=body.limit, offset=body.offset))
    return {"namespaces": [list(ns) for ns in out]}
