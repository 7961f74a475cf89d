"""Who may do what: users bound to a tenant and a role, and their API keys.

Keys are 32 random bytes, shown once and stored only as a SHA-256 digest. A slow hash
(bcrypt, argon2) protects low-entropy passwords; a 256-bit random key gains nothing from
it and would add latency to every request, so a plain digest is the right tool here.

A key may expire (``expires_at``) and be revoked; :meth:`PrincipalStore.authenticate` reads
the row on every call, so either is in force at once on every server sharing the database.
Operators name a key by its id, the first 16 hex digits of its digest (no secret).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta, UTC
from typing import Literal

from keel.db import Database
from keel.types import StrictModel

__all__ = ["Role", "ROLES", "Principal", "PrincipalStore", "ApiKeyInfo", "hash_key", "key_id_of", "KEY_ID_LEN"]

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


class ApiKeyInfo(StrictModel):
    """An API key as ``keel keys list`` shows it: never the key, nor its digest."""

    key_id: str
    """First :data:`KEY_ID_LEN` hex digits of the key's digest: how operators name it."""
    tenant: str
    user_id: str
    role: Role
    created_at: str
    expires_at: str | None = None
    """When the key stops working (ISO 8601, UTC); None: never."""
    revoked: bool = False
    revoked_at: str | None = None
    expired: bool = False
    """Expired by the store's clock when listed."""


KEY_ID_LEN = 16
"""Hex digits of a key's digest that name it (64 bits: unique in practice, and no secret)."""

_KEY_ID = re.compile(rf"^[0-9a-f]{{{KEY_ID_LEN}}}$")


def hash_key(key: str) -> str:
    """Digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_hash: str) -> str:
    """The public id of a key, from its digest."""
    return key_hash[:KEY_ID_LEN]


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

_ADDED_COLUMNS = (("api_keys", "expires_at", "TEXT"), ("api_keys", "revoked_at", "TEXT"))
"""Columns later versions added to ``api_keys`` (added in place on an older database)."""


def _utc(value: str | None) -> datetime | None:
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class PrincipalStore:
    """Users, roles and hashed API keys in the keel database."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = _wall_clock) -> None:
        self.db = db
        self.clock = clock
        """What "now" is for key expiry (tests inject one)."""

    def setup(self) -> None:
        """Create the tables and add the expiry and revocation columns to an older ``api_keys`` (idempotent)."""
        self.db.executescript(_DDL)
        if self.db.is_postgres:
            self.db.executescript(";".join(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} {d}" for t, c, d in _ADDED_COLUMNS))
            return
        with self.db.transaction() as tx:
            for table, column, decl in _ADDED_COLUMNS:
                if not any(r["name"] == column for r in tx.fetchall(f"PRAGMA table_info({table})")):
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

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

    def create_key(self, tenant: str, user_id: str, role: Role, expires_in: timedelta | None = None) -> str:
        """Create a key for the user (creating the user if needed), valid for ``expires_in``
        (None: until revoked); returns the key, shown once."""
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        self.upsert(tenant, user_id, role)
        key = "keel_" + secrets.token_urlsafe(32)
        now = self.clock()
        expires = (now + expires_in).astimezone(UTC).isoformat() if expires_in is not None else None
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_keys (key_hash, tenant, user_id, role, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (hash_key(key), tenant, user_id, role, now.astimezone(UTC).isoformat(), expires),
            )
        return key

    def authenticate(self, key: str) -> Principal | None:
        """The principal a key belongs to, or None for an unknown, revoked or expired key.

        One indexed read per call and no cache: a revoke or an expiry is in force at once,
        on every server of the database."""
        if not key or len(key) > 200:
            return None
        row = self.db.fetchone(
            "SELECT tenant, user_id, role, expires_at FROM api_keys WHERE key_hash = ? AND revoked = 0", (hash_key(key),)
        )
        if row is None:
            return None
        expires = _utc(row.pop("expires_at"))
        if expires is not None and self.clock() >= expires:
            return None
        return Principal(**row)

    def list_keys(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Every key (of ``tenant``, if given), oldest first, without the keys or their digests."""
        where, params = ("WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT key_hash, tenant, user_id, role, created_at, expires_at, revoked, revoked_at"
                               f" FROM api_keys {where} ORDER BY created_at, key_hash", params)
        now = self.clock()
        out = []
        for r in rows:
            expires = _utc(r["expires_at"])
            out.append(ApiKeyInfo(key_id=key_id_of(r["key_hash"]), tenant=r["tenant"], user_id=r["user_id"],
                                  role=r["role"], created_at=r["created_at"], expires_at=r["expires_at"],
                                  revoked=bool(r["revoked"]), revoked_at=r["revoked_at"],
                                  expired=expires is not None and now >= expires))
        return out

    def revoke(self, key_or_id: str) -> bool:
        """Revoke a key, named by the key itself or by its id (:func:`key_id_of`); True if it existed.

        An id that is not :data:`KEY_ID_LEN` hex digits is taken as a key."""
        at = self.clock().astimezone(UTC).isoformat()
        with self.db.transaction() as tx:
            if _KEY_ID.match(key_or_id):
                return tx.execute("UPDATE api_keys SET revoked = 1, revoked_at = COALESCE(revoked_at, ?)"
                                  " WHERE key_hash LIKE ?", (at, key_or_id + "%")) > 0
            return tx.execute("UPDATE api_keys SET revoked = 1, revoked_at = COALESCE(revoked_at, ?) WHERE key_hash = ?",
                              (at, hash_key(key_or_id))) > 0
