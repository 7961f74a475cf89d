"""The model-call cache: an identical temperature-0 call is answered once per tenant and TTL.

Why a table in keel's database and no in-process dictionary: keel runs as several worker
processes (and hosts) on one database, and a run retried on another worker must find what
the first one paid for. One row per ``(tenant, model, task, digest)``; the digest covers
exactly what the model was sent (the system prompt and the payload after personal data was
replaced by references, see :mod:`gateway.minimize`), the output schema and the call's
parameters (endpoint, model, structured-output method, answer tokens, temperature).

What is stored is the model's own answer, before the references were put back: the row
holds no more personal data than the model saw, and a hit is restored, re-validated and
re-checked against the current input like a fresh answer (a row that no longer passes is
dropped and the model is asked again).

Invalidation: a model call's payload carries the records it reads (the customer, the
orders), so a write to any of them changes the digest and the old row is simply never
asked for again; the TTL bounds everything else. Which calls may be cached at all is the
routing file's decision (``cache_ttl_s`` on a rule, off by default); only models that
charge tokens are cached (keel's local rules cost nothing and are faster than a lookup).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel.db import Database

__all__ = ["ModelCache", "CacheKey", "call_digest", "MODEL_CACHE_DDL"]

log = logging.getLogger("gateway.cache")

MODEL_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS model_cache (
  tenant TEXT NOT NULL,
  model TEXT NOT NULL,
  task TEXT NOT NULL,
  digest TEXT NOT NULL,
  answer TEXT NOT NULL,
  expires_ms BIGINT NOT NULL,
  PRIMARY KEY (tenant, model, task, digest)
);
CREATE INDEX IF NOT EXISTS model_cache_expiry ON model_cache (expires_ms)
"""


PURGE_EVERY = 256
"""Every this many stores, a process deletes the expired rows."""


@dataclass(frozen=True)
class CacheKey:
    """Where one call's answer is kept: per tenant, per routing model, per task."""

    tenant: str
    model: str
    task: str
    digest: str


def call_digest(system: str, sent: dict[str, Any], schema: dict[str, Any], params: dict[str, Any]) -> str:
    """SHA-256 over the exact request: system prompt, payload as sent, output schema, parameters."""
    canonical = json.dumps({"system": system, "payload": sent, "schema": schema, "params": params},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ModelCache:
    """Cached model answers in keel's database (SQLite or Postgres), with a TTL.

    ``clock`` returns seconds since the epoch (tests inject one to expire rows); it must
    agree across processes, so it is the wall clock by default, never a monotonic one.
    """

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._writes = 0

    def setup(self) -> None:
        """Create the table (idempotent; a runtime does it under its set-up lock)."""
        self.db.executescript(MODEL_CACHE_DDL)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        """The stored answer, or None when there is none or it expired."""
        row = self.db.fetchone(
            "SELECT answer, expires_ms FROM model_cache WHERE tenant = ? AND model = ? AND task = ? AND digest = ?",
            (key.tenant, key.model, key.task, key.digest))
        if row is None or int(row["expires_ms"]) <= self._now_ms():
            return None
        try:
            answer = json.loads(row["answer"])
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def put(self, key: CacheKey, answer: dict[str, Any], ttl_s: float) -> None:
        """Keep ``answer`` for ``ttl_s`` seconds (a concurrent writer of the same key: last one wins)."""
        expires = self._now_ms() + max(1, math.ceil(ttl_s * 1000))
        self.db.execute(
            "INSERT INTO model_cache (tenant, model, task, digest, answer, expires_ms) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant, model, task, digest) DO UPDATE SET answer = excluded.answer,"
            " expires_ms = excluded.expires_ms",
            (key.tenant, key.model, key.task, key.digest, json.dumps(answer, ensure_ascii=False, default=str), expires))
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:  # expired rows do not pile up (each is overwritten only by its own key)
            self.purge()

    def drop(self, key: CacheKey) -> None:
        """Forget one answer (a stored answer that no longer validates)."""
        self.db.execute("DELETE FROM model_cache WHERE tenant = ? AND model = ? AND task = ? AND digest = ?",
                        (key.tenant, key.model, key.task, key.digest))

    def purge(self) -> int:
        """Delete expired rows; returns how many."""
        return self.db.execute("DELETE FROM model_cache WHERE expires_ms <= ?", (self._now_ms(),))
