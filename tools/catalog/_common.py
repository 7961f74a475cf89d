"""Helpers shared by the support tools' implementations (not tools: no declarations here)."""

from __future__ import annotations

import uuid
from typing import Any

from keel.db import Tx

from ..backoffice import BackOffice
from ..contracts import ToolEnv, ToolError, TransientToolError, derived_id

__all__ = ["new_id", "mask_email", "own_customer", "own_order", "require_one"]


def new_id(prefix: str, env: ToolEnv) -> str:
    """A record id: derived from the idempotency key (stable on replay), else random."""
    if env.idempotency_key:
        return derived_id(prefix, env.tenant, env.idempotency_key)
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def own_customer(bo: BackOffice, tx: Tx, env: ToolEnv, customer_id: str) -> dict[str, Any]:
    customer = bo.get_customer(env.tenant, customer_id, tx)
    if customer is None:
        raise ToolError("not_found", "customer not found")
    if customer["id"] != env.customer_id:
        raise ToolError("not_owner", "customer is not the ticket's customer")
    return customer


def own_order(bo: BackOffice, tx: Tx, env: ToolEnv, order_id: str) -> dict[str, Any]:
    order = bo.get_order(env.tenant, order_id, tx)
    if order is None:
        raise ToolError("not_found", "order not found")
    if order["customer_id"] != env.customer_id:
        raise ToolError("not_owner", "order does not belong to the ticket's customer")
    return order


def require_one(changed: int) -> None:
    if changed != 1:  # a concurrent call changed the record between our read and write
        raise TransientToolError("record changed concurrently")
