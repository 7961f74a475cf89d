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
from typing import Any, Protocol

from pydantic import Field

from keel.audit import canonical_json
from keel.errors import KeelError
from keel.types import ProposedAction, StrictModel

__all__ = ["Plan", "SignedPlan", "PlanIntegrityError", "PlanKeys", "sign_plan", "verify_plan", "idempotency_key"]


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
    """HMAC-SHA256 of ``key_id:hash`` (of ``hash`` alone without a key id) under that key."""
    key_id: str | None = None
    """Id of the signing key (:mod:`keel.keys`); None: signed with a bare key (plans signed
    before keys had ids verify with the configured key while it is not retired)."""


class PlanKeys(Protocol):
    """A keyring (:class:`keel.keys.Keyring`): the key that signs, and the key a plan names."""

    def signing(self) -> tuple[str, bytes]:
        """``(key_id, material)`` of the active key."""
        ...

    def verifying(self, key_id: str | None) -> bytes:
        """Material of key ``key_id``; raises :class:`PlanIntegrityError` if it is retired or unknown."""
        ...


def _hash(plan: Plan) -> str:
    return hashlib.sha256(canonical_json(plan.model_dump(mode="json")).encode()).hexdigest()


def _mac(key: bytes, key_id: str | None, digest: str) -> str:
    message = digest if key_id is None else f"{key_id}:{digest}"  # the id is signed too
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign_plan(plan: Plan, key: bytes | PlanKeys) -> SignedPlan:
    """Hash and sign a plan: with a keyring's active key (naming it), or a bare key."""
    digest = _hash(plan)
    key_id, material = (None, key) if isinstance(key, bytes) else key.signing()
    return SignedPlan(plan=plan, hash=digest, signature=_mac(material, key_id, digest), key_id=key_id)


def verify_plan(signed: SignedPlan | dict[str, Any], key: bytes | PlanKeys) -> SignedPlan:
    """Return the plan if its hash and signature (under the key it names) match its content, else raise."""
    sp = signed if isinstance(signed, SignedPlan) else SignedPlan.model_validate(signed)
    if not hmac.compare_digest(_hash(sp.plan), sp.hash):
        raise PlanIntegrityError("plan content does not match its hash")
    material = key if isinstance(key, bytes) else key.verifying(sp.key_id)
    if not hmac.compare_digest(_mac(material, sp.key_id, sp.hash), sp.signature):
        raise PlanIntegrityError("plan signature is invalid")
    return sp


def idempotency_key(thread_id: str, plan_hash: str, index: int) -> str:
    """The ledger key of action ``index``: the same on every re-run of the same plan."""
    return hashlib.sha256(f"{thread_id}:{plan_hash}:{index}".encode()).hexdigest()
