"""Who may do what: users bound to a tenant and a role, and their API keys.

Keys are 32 random bytes, shown once and stored only as a SHA-256 digest. A slow hash
(bcrypt, argon2) protects low-entropy passwords; a 256-bit random key gains nothing from
it and would add latency to every request, so a plain digest is the right tool here.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, UTC
from typing import Literal

from keel.db import Database
from keel.types import StrictModel

__all__ = ["Role", "ROLES", "Principal", "PrincipalStore", "hash_key"]

Role = Literal["requester", "approver", "admin"]
"""``requester``: starts runs. ``approver``: reviews plans of its tenant. ``admin``: manages
fixtures, keys and dead letters of its tenant. Who may approve or reject a plan is not a
property of the role: the policy pack's ``[approvals] approver_roles`` says (see
:mod:`guards.approvals`)."""

ROLES: tuple[Role, ...] = ("requester", "approver", "admin")


class Principal(StrictModel):
    """An authenticated caller."""

    tenant: str
    """The only tenant whose data the caller can see."""
    user_id: str
    """Stable user id; recorded as the actor in the audit log."""
    role: Role
    """What the caller may do."""


def hash_key(key: str) -> str:
    """Digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


_DDL = """
CREATE TABLE IF NOT EXISTS principals (
  tenant TEXT NOT NULL,
  user_id TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (tenant, user_id)
);
CREATE TABLE IF NOT EXISTS api_keys (
  key_hash TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  user_id TEXT NOT NULL,
  role TEXT NOT NULL,
  created_at TEXT NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0
)
"""


class PrincipalStore:
    """Users, roles and hashed API keys in the keel database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> None:
        """Create the tables (idempotent)."""
        self.db.executescript(_DDL)

    def upsert(self, tenant: str, user_id: str, role: Role) -> Principal:
        """Create or re-role a user."""
        p = Principal(tenant=tenant, user_id=user_id, role=role)
        now = datetime.now(UTC).isoformat()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO principals (tenant, user_id, role, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (tenant, user_id) DO UPDATE SET role = excluded.role",
                (tenant, user_id, role, now),
            )
        return p

    def get(self, tenant: str, user_id: str) -> Principal | None:
        """The user's principal in a tenant, or None."""
        with self.db.transaction() as tx:
            row = tx.fetchone("SELECT tenant, user_id, role FROM principals WHERE tenant = ? AND user_id = ?", (tenant, user_id))
        return Principal(**row) if row else None

    def find(self, user_id: str) -> list[Principal]:
        """Every tenant membership of a user id."""
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT tenant, user_id, role FROM principals WHERE user_id = ?", (user_id,))
        return [Principal(**r) for r in rows]

    def create_key(self, tenant: str, user_id: str, role: Role) -> str:
        """Create a key for the user (creating the user if needed); returns the key, shown once."""
        self.upsert(tenant, user_id, role)
        key = "keel_" + secrets.token_urlsafe(32)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_keys (key_hash, tenant, user_id, role, created_at) VALUES (?, ?, ?, ?, ?)",
                (hash_key(key), tenant, user_id, role, datetime.now(UTC).isoformat()),
            )
        return key

    def authenticate(self, key: str) -> Principal | None:
        """The principal a key belongs to, or None for an unknown or revoked key."""
        if not key or len(key) > 200:
            return None
        with self.db.transaction() as tx:
            row = tx.fetchone(
                "SELECT tenant, user_id, role FROM api_keys WHERE key_hash = ? AND revoked = 0", (hash_key(key),)
            )
        return Principal(**row) if row else None

    def revoke(self, key: str) -> bool:
        """Revoke a key; True if it existed."""
        with self.db.transaction() as tx:
            return tx.execute("UPDATE api_keys SET revoked = 1 WHERE key_hash = ?", (hash_key(key),)) > 0
