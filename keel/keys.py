"""The plan-signing keyring: several keys verify at once, one signs, retired keys verify nothing.

Why a keyring and not one key: rotating a single HMAC key would invalidate every plan
waiting for approval (days, sometimes), and a leaked key could only be dropped by breaking
them all. Each key has an id (``k-<yyyymmdd>-<hex>``) that the signature names
(:attr:`keel.plan.SignedPlan.key_id`) and a state:

- ``active``: signs new plans and verifies. After the first rotation that is the newest key
  ``keel keys rotate-signing`` made, on every server; before it, each server signs with its
  own configured key (as keel always did), so every configured key is active until then;
- ``verify_only``: the previous active keys; plans they signed still verify and execute;
- ``retired``: verifies nothing, so a plan it signed never executes nor gets approved.

Keys live in keel's database (``signing_keys``), which every server and worker of a
deployment shares (SQLite in the data dir for the embedded default), and each lookup reads
the row, so a retirement is in force at once everywhere. The key configured by
``KEEL_PLAN_SIGNING_KEY`` / ``KEEL_PLAN_SIGNING_KEY_FILE`` (or generated into the data dir)
stays a key of the ring with a stable id derived from it (``k-cfg-<fingerprint>``): its
material is never written to the database (the row records its state only), and plans signed
before keys had ids (no ``key_id``) verify with it while it is not retired.

Key material never leaves this module except into the HMAC: no repr, log line, audit row,
span or graph state carries more than the id.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from keel.db import Database, Tx
from keel.errors import InvalidInput
from keel.plan import PlanIntegrityError
from keel.types import StrictModel

__all__ = [
    "KeyState",
    "SigningKeyInfo",
    "Keyring",
    "SigningKeyRetired",
    "UnknownSigningKey",
    "KeyringError",
    "configured_key_id",
]

log = logging.getLogger("keel.keys")

KeyState = Literal["active", "verify_only", "retired"]

_DDL = """
CREATE TABLE IF NOT EXISTS signing_keys (
  key_id TEXT PRIMARY KEY,
  state TEXT NOT NULL,
  source TEXT NOT NULL,
  secret TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
)
"""


class SigningKeyRetired(PlanIntegrityError):
    """The plan names a signing key that was retired: it is no longer trusted."""

    code = "signing_key_retired"


class UnknownSigningKey(PlanIntegrityError):
    """The plan names a signing key the ring does not hold (a forged or mistyped id)."""

    code = "signing_key_unknown"


class KeyringError(InvalidInput):
    """An operator's keyring command that cannot be done (unknown id, retiring the signer)."""


class SigningKeyInfo(StrictModel):
    """One key as operators see it: everything but its material."""

    key_id: str
    state: KeyState
    source: Literal["generated", "configured"]
    """``generated``: created by ``keel keys rotate-signing`` (material in the database);
    ``configured``: from ``KEEL_PLAN_SIGNING_KEY[_FILE]`` or the data dir (material never stored)."""
    created_at: str
    updated_at: str


def configured_key_id(material: bytes) -> str:
    """The stable id of a configured key: a keyed fingerprint (says nothing about the key)."""
    return "k-cfg-" + hashlib.sha256(b"keel-signing-key-id\x00" + material).hexdigest()[:12]


def _now() -> datetime:
    return datetime.now(UTC)


class Keyring:
    """Plan-signing keys in keel's database (implements :class:`keel.plan.PlanKeys`)."""

    def __init__(self, db: Database, configured: bytes, *, clock: Callable[[], datetime] = _now,
                 shared_default: bool = False) -> None:
        self._db = db
        self._shared_default = shared_default
        """No key was configured and the database is shared (Postgres): the ring starts with one
        generated key, so servers with their own data dirs (and so their own generated configured
        keys) sign with the same key from the first plan on, instead of refusing each other's."""
        self._configured = configured
        self._configured_id = configured_key_id(configured)
        self._clock = clock
        self._ready = False

    def __repr__(self) -> str:  # never the material
        return f"Keyring(configured={self._configured_id})"

    @property
    def configured_id(self) -> str:
        """Id of this process's configured key (also the key of plans signed without an id)."""
        return self._configured_id

    # -- set-up ---------------------------------------------------------------------------
    def setup(self) -> Keyring:
        """Create the table and register the configured key (active unless a rotated key is).

        With ``shared_default`` and no generated key yet, the first key is generated here (the
        caller holds the deployment's set-up lock, so two servers starting at once make one)."""
        self._db.executescript(_DDL)
        now = self._clock().isoformat()
        with self._db.transaction() as tx:
            has_active = tx.fetchone("SELECT key_id FROM signing_keys WHERE state = 'active'"
                                     " AND source = 'generated'") is not None
            tx.execute(
                "INSERT INTO signing_keys (key_id, state, source, secret, created_at, updated_at)"
                " VALUES (?, ?, 'configured', NULL, ?, ?) ON CONFLICT (key_id) DO NOTHING",
                (self._configured_id, "verify_only" if has_active else "active", now, now),
            )
            ever_generated = tx.fetchone("SELECT key_id FROM signing_keys WHERE source = 'generated'") is not None
        self._ready = True
        if self._shared_default and not ever_generated:
            self.rotate()
        return self

    def _ensure(self) -> None:
        if not self._ready:
            self.setup()

    # -- PlanKeys -----------------------------------------------------------------------
    def signing(self) -> tuple[str, bytes]:
        """Id and material of the key new plans are signed with: the newest rotated key, else
        this server's configured key (one read)."""
        self._ensure()
        with self._db.transaction() as tx:
            rows = tx.fetchall("SELECT key_id, state, source, secret, created_at FROM signing_keys"
                               " WHERE (state = 'active' AND source = 'generated') OR key_id = ?", (self._configured_id,))
        rotated = sorted((r for r in rows if r["source"] == "generated"), key=lambda r: r["created_at"])
        if rotated:
            return rotated[-1]["key_id"], self._material(rotated[-1])
        own = next((r for r in rows if r["key_id"] == self._configured_id), None)
        if own is not None and own["state"] == "retired":
            raise KeyringError(f"the configured signing key {self._configured_id} is retired and no rotated key is "
                               "active: run `keel keys rotate-signing`")
        return self._configured_id, self._configured

    def verifying(self, key_id: str | None) -> bytes:
        """The material of the key a plan names (None: the configured key, for plans signed
        before keys had ids); raises :class:`SigningKeyRetired` or :class:`UnknownSigningKey`."""
        self._ensure()
        kid = key_id or self._configured_id
        row = self._db.fetchone("SELECT key_id, state, source, secret FROM signing_keys WHERE key_id = ?", (kid,))
        if row is None:
            raise UnknownSigningKey(f"plan names unknown signing key {kid}")
        if row["state"] == "retired":
            raise SigningKeyRetired(f"plan was signed with retired signing key {kid}")
        return self._material(row)

    def _material(self, row: dict[str, object]) -> bytes:
        if row["source"] == "generated" and row["secret"]:
            return bytes.fromhex(str(row["secret"]))
        if row["key_id"] == self._configured_id:
            return self._configured
        # a configured key of another process (its material is in that process's environment)
        raise UnknownSigningKey(f"signing key {row['key_id']} is configured on another server, not on this one")

    # -- operations -----------------------------------------------------------------------
    def list(self) -> list[SigningKeyInfo]:
        """Every key, newest first (no material)."""
        self._ensure()
        with self._db.transaction() as tx:
            rows = tx.fetchall("SELECT key_id, state, source, created_at, updated_at FROM signing_keys"
                               " ORDER BY created_at DESC, key_id")
        return [SigningKeyInfo(**r) for r in rows]

    def rotate(self) -> SigningKeyInfo:
        """A new active key; the previous active key becomes verify-only (its plans stay valid)."""
        self._ensure()
        now = self._clock()
        kid = f"k-{now:%Y%m%d}-{secrets.token_hex(4)}"
        with self._db.transaction() as tx:
            tx.execute("UPDATE signing_keys SET state = 'verify_only', updated_at = ? WHERE state = 'active'",
                       (now.isoformat(),))
            tx.execute("INSERT INTO signing_keys (key_id, state, source, secret, created_at, updated_at)"
                       " VALUES (?, 'active', 'generated', ?, ?, ?)",
                       (kid, secrets.token_hex(32), now.isoformat(), now.isoformat()))
            info = self._get(tx, kid)
        log.info("plan-signing key %s is now active", kid)
        assert info is not None
        return info

    def retire(self, key_id: str) -> SigningKeyInfo:
        """Retire a verify-only key: plans it signed no longer execute nor get approved."""
        self._ensure()
        with self._db.transaction() as tx:
            info = self._get(tx, key_id)
            if info is None:
                raise KeyringError(f"no signing key {key_id!r} (see `keel keys list-signing`)")
            if info.state == "active":
                raise KeyringError(f"{key_id} is an active signing key: run `keel keys rotate-signing` first")
            tx.execute("UPDATE signing_keys SET state = 'retired', updated_at = ? WHERE key_id = ?",
                       (self._clock().isoformat(), key_id))
            info = self._get(tx, key_id)
        log.info("plan-signing key %s retired", key_id)
        assert info is not None
        return info

    @staticmethod
    def _get(tx: Tx, key_id: str) -> SigningKeyInfo | None:
        row = tx.fetchone("SELECT key_id, state, source, created_at, updated_at FROM signing_keys WHERE key_id = ?",
                          (key_id,))
        return SigningKeyInfo(**row) if row else None
