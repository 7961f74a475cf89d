"""The plan artifact: canonical JSON, SHA-256 hash, HMAC signature.

A plan is what a reviewer approves and what execution accepts. Its hash covers
everything that could change what happens (tenant, customer, thread, policy version,
every tool and argument), so an approval that names a hash approves exactly one plan;
the HMAC proves keel produced it, so a plan edited in the checkpoint store or the
database after validation is refused at execution.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from pydantic import Field

from keel.audit import canonical_json
from keel.errors import KeelError
from keel.types import ProposedAction, StrictModel

__all__ = ["Plan", "SignedPlan", "PlanIntegrityError", "sign_plan", "verify_plan", "idempotency_key"]


class PlanIntegrityError(KeelError):
    """The plan's hash or signature does not match its content."""

    code = "plan_tampered"


class Plan(StrictModel):
    """What will be done, for whom, under which policy."""

    tenant: str
    """Tenant whose systems the actions touch."""
    customer_id: str
    """The ticket's customer; every record named must be theirs."""
    ticket_id: str
    """Source ticket."""
    thread_id: str
    """Run thread; part of every idempotency key."""
    route: str
    """Specialist that proposed the plan."""
    policy_version: str
    """Policy pack version the plan is validated against."""
    actions: list[ProposedAction] = Field(default_factory=list)
    """Ordered actions."""


class SignedPlan(StrictModel):
    """A plan with its hash and signature, as stored in graph state."""

    plan: Plan
    """The content."""
    hash: str
    """SHA-256 of the plan's canonical JSON."""
    signature: str
    """HMAC-SHA256 of ``hash`` under keel's signing key."""


def _hash(plan: Plan) -> str:
    return hashlib.sha256(canonical_json(plan.model_dump(mode="json")).encode()).hexdigest()


def sign_plan(plan: Plan, key: bytes) -> SignedPlan:
    """Hash and sign a plan."""
    digest = _hash(plan)
    sig = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
    return SignedPlan(plan=plan, hash=digest, signature=sig)


def verify_plan(signed: SignedPlan | dict[str, Any], key: bytes) -> SignedPlan:
    """Return the plan if its hash and signature match its content, else raise."""
    sp = signed if isinstance(signed, SignedPlan) else SignedPlan.model_validate(signed)
    if not hmac.compare_digest(_hash(sp.plan), sp.hash):
        raise PlanIntegrityError("plan content does not match its hash")
    expected = hmac.new(key, sp.hash.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sp.signature):
        raise PlanIntegrityError("plan signature is invalid")
    return sp


def idempotency_key(thread_id: str, plan_hash: str, index: int) -> str:
    """The ledger key of action ``index``: the same on every re-run of the same plan."""
    return hashlib.sha256(f"{thread_id}:{plan_hash}:{index}".encode()).hexdigest()
