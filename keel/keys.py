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

Generated keys' material is stored encrypted (envelope encryption), so a dump or backup of the
database holds no key that could sign a refund: with a key-encryption key (KEK) configured
(``KEEL_KEY_ENCRYPTION_KEY[_FILE]``, :class:`KeyEncryption`) a row's ``secret`` is
``fernet:<kek_id>:<token>``, a Fernet token (AES-128-CBC + HMAC-SHA256) of the key id and the
material under a Fernet key derived from the operator's secret with HKDF-SHA256; ``kek_id`` is
a short fingerprint of the KEK (``kek-<hex>``, says nothing about it). Binding the key id into
the token means a ciphertext copied onto another row does not decrypt as that key. Rows written
before (or without) a KEK hold the material as cleartext hex and still read. A KEK is rotated by
configuring the new one as ``KEEL_KEY_ENCRYPTION_KEY`` and the old one in
``KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS`` (every server and worker of a deployment needs the same
KEKs), then running ``keel keys rewrap-signing`` (:meth:`Keyring.rewrap`), which re-encrypts
every generated key, cleartext rows included, under the current KEK; after that the old KEK can
go. A key stored under a KEK this process lacks is a :class:`KeyringError` naming the KEK's id.
Without a KEK keys are stored in cleartext with one warning a process, and refused outright
with ``KEEL_ENV=prod`` (``require_encryption``).

Key material never leaves this module except into the HMAC: no repr, log line, audit row,
span or graph state carries more than the id (of the key, or of the KEK).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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
    "KeyEncryption",
    "RewrapReport",
    "configured_key_id",
    "kek_id_of",
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
    encrypted: bool = False
    """The material is stored encrypted under a KEK (False for a configured key: not stored at all)."""
    kek_id: str | None = None
    """Id of the KEK the material is encrypted under (``kek-<fingerprint>``)."""


class RewrapReport(StrictModel):
    """What :meth:`Keyring.rewrap` did: keys re-encrypted under ``kek_id``, counted by where they came from."""

    kek_id: str
    """The current KEK, which every generated key is now stored under."""
    rewrapped: dict[str, int]
    """Keys re-encrypted, by what they were stored under before: ``cleartext`` or a KEK id."""
    unchanged: int
    """Keys that were stored under the current KEK already."""


_FERNET_PREFIX = "fernet:"
_HKDF_SALT = b"keel-signing-keys-kek"


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_HKDF_SALT, info=info).derive(secret)


def kek_id_of(secret: bytes) -> str:
    """The id of a KEK: a short HKDF-derived fingerprint (names the KEK, says nothing about it)."""
    return "kek-" + _hkdf(secret, b"keel-kek-id-v1", 6).hex()


def _stored_under(secret: str) -> str | None:
    """The KEK id a stored secret is encrypted under; None: cleartext hex (written without a KEK)."""
    if not secret.startswith(_FERNET_PREFIX):
        return None
    return secret[len(_FERNET_PREFIX):].split(":", 1)[0]


class KeyEncryption:
    """This process's KEKs: the current one encrypts, it and the previous ones decrypt.

    Built from the operator's secrets (:meth:`keel.config.Settings.key_encryption_keys`); each
    becomes a Fernet key through HKDF-SHA256, so any long random string will do."""

    def __init__(self, current: bytes | None = None, previous: Sequence[bytes] = ()) -> None:
        self._current_id = kek_id_of(current) if current else None
        self._fernets: dict[str, Fernet] = {}
        for secret in ([current] if current else []) + list(previous):
            kid = kek_id_of(secret)
            if kid not in self._fernets:  # the current KEK listed as previous too
                self._fernets[kid] = Fernet(base64.urlsafe_b64encode(_hkdf(secret, b"keel-kek-fernet-v1", 32)))

    def __repr__(self) -> str:  # ids only
        return f"KeyEncryption(current={self._current_id}, known={sorted(self._fernets)})"

    @property
    def current_id(self) -> str | None:
        """Id of the KEK new keys are encrypted under; None: no KEK configured."""
        return self._current_id

    def wrap(self, key_id: str, material: bytes) -> str:
        """``fernet:<kek_id>:<token>`` of key ``key_id`` under the current KEK (which must be set)."""
        assert self._current_id is not None, "no current KEK"
        token = self._fernets[self._current_id].encrypt(key_id.encode() + b"\x00" + material)
        return f"{_FERNET_PREFIX}{self._current_id}:{token.decode()}"

    def unwrap(self, key_id: str, stored: str) -> bytes:
        """The material of key ``key_id`` from its stored secret (encrypted, or legacy cleartext hex)."""
        kek = _stored_under(stored)
        if kek is None:
            try:
                return bytes.fromhex(stored)
            except ValueError:
                raise KeyringError(f"signing key {key_id}: its stored material is neither hex nor a "
                                   "fernet:<kek_id>:<token> (the row is corrupt)") from None
        fernet = self._fernets.get(kek)
        if fernet is None:
            raise KeyringError(f"signing key {key_id} is encrypted under key-encryption key {kek}, which is not "
                               "configured here: configure it as KEEL_KEY_ENCRYPTION_KEY (or list it in "
                               "KEEL_KEY_ENCRYPTION_KEYS_PREVIOUS) on every server and worker, and run "
                               "`keel keys rewrap-signing` to move the keys to the current one")
        try:
            plain = fernet.decrypt(stored.split(":", 2)[2].encode())
        except (InvalidToken, IndexError):
            raise KeyringError(f"signing key {key_id}: its stored material does not decrypt under "
                               f"key-encryption key {kek} (the row is corrupt or was tampered with)") from None
        owner, sep, material = plain.partition(b"\x00")
        if not sep or owner != key_id.encode():
            raise KeyringError(f"signing key {key_id}: its stored material belongs to another key "
                               "(the row was tampered with)")
        return material


_warned_unencrypted = False


def _warn_unencrypted() -> None:
    """Say once per process that generated keys sit in the database unencrypted, and the fix."""
    global _warned_unencrypted
    if not _warned_unencrypted:
        _warned_unencrypted = True
        log.warning("plan-signing keys are stored unencrypted in keel's database (signing_keys.secret): a dump or "
                    "backup of it leaks them. Set KEEL_KEY_ENCRYPTION_KEY (or KEEL_KEY_ENCRYPTION_KEY_FILE), the "
                    "same on every server and worker, then run `keel keys rewrap-signing`")


def configured_key_id(material: bytes) -> str:
    """The stable id of a configured key: a keyed fingerprint (says nothing about the key)."""
    return "k-cfg-" + hashlib.sha256(b"keel-signing-key-id\x00" + material).hexdigest()[:12]


def _now() -> datetime:
    return datetime.now(UTC)


class Keyring:
    """Plan-signing keys in keel's database (implements :class:`keel.plan.PlanKeys`)."""

    def __init__(self, db: Database, configured: bytes, *, clock: Callable[[], datetime] = _now,
                 shared_default: bool = False, kek: KeyEncryption | None = None,
                 require_encryption: bool = False) -> None:
        self._db = db
        self._kek = kek or KeyEncryption()
        self._require_encryption = require_encryption
        """``KEEL_ENV=prod``: a key is never generated without a KEK to encrypt it under."""
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
            stored = str(row["secret"])
            if _stored_under(stored) is None:
                _warn_unencrypted()
            return self._kek.unwrap(str(row["key_id"]), stored)
        if row["key_id"] == self._configured_id:
            return self._configured
        # a configured key of another process (its material is in that process's environment)
        raise UnknownSigningKey(f"signing key {row['key_id']} is configured on another server, not on this one")

    # -- operations -----------------------------------------------------------------------
    def list(self) -> list[SigningKeyInfo]:
        """Every key, newest first (no material)."""
        self._ensure()
        with self._db.transaction() as tx:
            rows = tx.fetchall("SELECT key_id, state, source, secret, created_at, updated_at FROM signing_keys"
                               " ORDER BY created_at DESC, key_id")
        return [self._info(r) for r in rows]

    def rotate(self) -> SigningKeyInfo:
        """A new active key; the previous active key becomes verify-only (its plans stay valid)."""
        self._ensure()
        now = self._clock()
        kid = f"k-{now:%Y%m%d}-{secrets.token_hex(4)}"
        stored = self._store(kid, secrets.token_bytes(32))
        with self._db.transaction() as tx:
            tx.execute("UPDATE signing_keys SET state = 'verify_only', updated_at = ? WHERE state = 'active'",
                       (now.isoformat(),))
            tx.execute("INSERT INTO signing_keys (key_id, state, source, secret, created_at, updated_at)"
                       " VALUES (?, 'active', 'generated', ?, ?, ?)",
                       (kid, stored, now.isoformat(), now.isoformat()))
            info = self._get(tx, kid)
        log.info("plan-signing key %s is now active (%s)", kid,
                 f"encrypted under {self._kek.current_id}" if self._kek.current_id else "stored unencrypted")
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

    def rewrap(self) -> RewrapReport:
        """Re-encrypt every generated key (cleartext ones included) under the current KEK.

        All or nothing: a key stored under a KEK this process lacks is a :class:`KeyringError`
        naming that KEK, and no row changes. A row another process rewrapped meanwhile is left
        as that process wrote it (each update is conditional on the secret it read)."""
        self._ensure()
        current = self._kek.current_id
        if current is None:
            raise KeyringError("no key-encryption key is configured: set KEEL_KEY_ENCRYPTION_KEY (or "
                               "KEEL_KEY_ENCRYPTION_KEY_FILE) to encrypt the plan-signing keys under it")
        rewrapped: dict[str, int] = {}
        unchanged = 0
        now = self._clock().isoformat()
        with self._db.transaction() as tx:
            rows = tx.fetchall("SELECT key_id, secret FROM signing_keys WHERE source = 'generated'"
                               " AND secret IS NOT NULL ORDER BY created_at, key_id")
            updates = []
            for r in rows:
                before = _stored_under(r["secret"])
                if before == current:
                    unchanged += 1
                    continue
                material = self._kek.unwrap(r["key_id"], r["secret"])
                updates.append((self._kek.wrap(r["key_id"], material), now, r["key_id"], r["secret"]))
                rewrapped[before or "cleartext"] = rewrapped.get(before or "cleartext", 0) + 1
            for u in updates:
                tx.execute("UPDATE signing_keys SET secret = ?, updated_at = ? WHERE key_id = ? AND secret = ?", u)
        log.info("plan-signing keys rewrapped under %s: %s (%d already under it)", current,
                 ", ".join(f"{n} from {src}" for src, n in rewrapped.items()) or "none", unchanged)
        return RewrapReport(kek_id=current, rewrapped=rewrapped, unchanged=unchanged)

    def _store(self, key_id: str, material: bytes) -> str:
        """What the ``secret`` column holds for a new key: encrypted under the current KEK; cleartext
        hex without one (a warning), refused when encryption is required (``KEEL_ENV=prod``)."""
        if self._kek.current_id is not None:
            return self._kek.wrap(key_id, material)
        if self._require_encryption:
            raise KeyringError("KEEL_ENV=prod: refusing to generate a plan-signing key without a key-encryption "
                               "key to store it under: set KEEL_KEY_ENCRYPTION_KEY (or KEEL_KEY_ENCRYPTION_KEY_FILE), "
                               "the same on every server and worker")
        _warn_unencrypted()
        return material.hex()

    @staticmethod
    def _info(row: dict[str, object]) -> SigningKeyInfo:
        secret = row.get("secret")
        kek = _stored_under(str(secret)) if secret else None
        return SigningKeyInfo(**{k: v for k, v in row.items() if k != "secret"}, encrypted=kek is not None, kek_id=kek)

    @classmethod
    def _get(cls, tx: Tx, key_id: str) -> SigningKeyInfo | None:
        row = tx.fetchone("SELECT key_id, state, source, secret, created_at, updated_at FROM signing_keys"
                          " WHERE key_id = ?", (key_id,))
        return cls._info(row) if row else None
