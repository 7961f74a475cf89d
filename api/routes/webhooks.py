"""Webhooks (admin): subscriptions of the caller's tenant, and deliveries that kept failing.

``POST /webhooks`` subscribes a URL to events (``run.awaiting_approval``, ``run.escalated``,
``run.completed``, ``run.dead_lettered``) and returns the signing secret once; ``GET`` lists
subscriptions (never their secrets); ``DELETE /webhooks/{id}`` removes one.
``GET /webhooks/deliveries`` shows every delivery with its attempts; ``GET
/webhooks/dead-letters`` the ones that exhausted their retries. Deliveries are signed
``X-Keel-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")`` (:mod:`engine.webhooks`).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query

from api.deps import ApiState, request_correlation_id, get_state, require_roles
from api.errors import http_error
from api.models import MAX_OFFSET
from engine.review import review_desk
from engine.webhooks import SubscriptionIn
from keel.principals import Principal

router = APIRouter(tags=["webhooks"])

_ADMIN = require_roles("admin")


@router.post("/webhooks", summary="Subscribe a URL to events (admin)", status_code=201)
def create_webhook(body: SubscriptionIn, st: ApiState = Depends(get_state), p: Principal = Depends(_ADMIN),
                   cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """The subscription and its signing ``secret``, shown this once."""
    sub, secret = review_desk(st.runtime).webhooks.subscribe(p.tenant, body, actor=p.user_id)
    st.runtime.audit.append(p.tenant, "webhook", actor=p.user_id, correlation_id=cid,
                            data={"event": "subscribed", "subscription_id": sub.id, "url": sub.url,
                                  "events": sub.events})
    return {**sub.model_dump(), "secret": secret}


@router.get("/webhooks", summary="Webhook subscriptions (admin)")
def list_webhooks(st: ApiState = Depends(get_state), p: Principal = Depends(_ADMIN)) -> dict[str, Any]:
    """The tenant's subscriptions (without secrets)."""
    return {"items": [s.model_dump() for s in review_desk(st.runtime).webhooks.subscriptions(p.tenant)]}


@router.get("/webhooks/dead-letters", summary="Webhook deliveries that kept failing (admin)")
def webhook_dead_letters(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                         st: ApiState = Depends(get_state), p: Principal = Depends(_ADMIN)) -> dict[str, Any]:
    """Deliveries that exhausted their attempts, newest first, each with every attempt."""
    items = review_desk(st.runtime).webhooks.dead_letters(p.tenant, limit=limit, offset=offset)
    return {"items": [d.model_dump() for d in items], "limit": limit, "offset": offset}


@router.get("/webhooks/deliveries", summary="Webhook deliveries and their attempts (admin)")
def webhook_deliveries(status: Literal["pending", "delivered", "dead"] | None = Query(None),
                       limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_OFFSET),
                       st: ApiState = Depends(get_state), p: Principal = Depends(_ADMIN)) -> dict[str, Any]:
    """Every delivery of the tenant (optionally by status), newest first, with its attempts."""
    items = review_desk(st.runtime).webhooks.deliveries(p.tenant, status=status, limit=limit, offset=offset)
    return {"items": [d.model_dump() for d in items], "limit": limit, "offset": offset}


@router.delete("/webhooks/{subscription_id}", summary="Remove a subscription (admin)")
def delete_webhook(subscription_id: str, st: ApiState = Depends(get_state), p: Principal = Depends(_ADMIN),
                   cid: str = Depends(request_correlation_id)) -> dict[str, Any]:
    """Stop sending to it; its pending deliveries go to the dead letters."""
    if len(subscription_id) > 64 or not review_desk(st.runtime).webhooks.unsubscribe(p.tenant, subscription_id):
        raise http_error(404, "webhook_not_found", f"webhook {subscription_id[:64]} not found")
    st.runtime.audit.append(p.tenant, "webhook", actor=p.user_id, correlation_id=cid,
                            data={"event": "unsubscribed", "subscription_id": subscription_id})
    return {"id": subscription_id, "deleted": True}
