"""Per-key rate limits: one budget per API key across every ``keel serve`` process.

Both limiters implement GCRA (the generic cell rate algorithm, a token bucket kept as one
"theoretical arrival time" per key): ``per_minute`` requests a minute sustained, up to
``burst`` at once. :meth:`take` spends one request and returns 0.0, or the seconds until
the next request would be allowed (the ``Retry-After`` of a 429).

* :class:`keel.ratelimit.LocalRateLimiter` keeps the state in this process: the embedded
  SQLite server (one process by construction) and tests. It is keel's one in-process
  limiter, also the tool runner's per-tenant limit.
* :class:`SharedRateLimiter` keeps it in one Postgres row per key, updated by a single
  ``INSERT … ON CONFLICT DO UPDATE`` on the database's clock, so N servers behind a load
  balancer enforce one limit, not N (a row lock serializes a key's concurrent requests;
  different keys never wait for each other). Hand-written rather than a library: the
  registry's rate-limit packages keep their state in process memory or Redis, and keel's
  only shared store is Postgres; the algorithm is one statement.
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.queue import SCHEMA_LOCK
from keel.ratelimit import LocalRateLimiter

__all__ = ["RateLimiter", "LocalRateLimiter", "SharedRateLimiter", "rate_limiter"]


class RateLimiter(Protocol):
    """What the auth dependency needs from a limiter."""

    rate: float
    """Requests per second sustained; 0 or less turns limiting off."""

    def take(self, key: str) -> float:
        """Spend one request of ``key``; 0.0 if allowed, else seconds until one is."""
        ...


_DDL = """
CREATE TABLE IF NOT EXISTS api_rate_limits (
  key_digest TEXT PRIMARY KEY,
  tat DOUBLE PRECISION NOT NULL,
  allowed BOOLEAN NOT NULL
)
"""

# GCRA in one statement: ``now`` is the database's clock (the same for every server),
# SET expressions read the row as it was, so ``allowed`` and ``tat`` decide together
_GCRA_SET = """
  allowed = r.tat - EXTRACT(EPOCH FROM now())::float8 <= %(tolerance)s,
  tat = CASE WHEN r.tat - EXTRACT(EPOCH FROM now())::float8 <= %(tolerance)s
             THEN GREATEST(r.tat, EXTRACT(EPOCH FROM now())::float8) + %(step)s
             ELSE r.tat END
RETURNING allowed, r.tat - EXTRACT(EPOCH FROM now())::float8 - %(tolerance)s AS wait"""

_TAKE = """
INSERT INTO api_rate_limits AS r (key_digest, tat, allowed)
VALUES (%(key)s, EXTRACT(EPOCH FROM now())::float8 + %(step)s, TRUE)
ON CONFLICT (key_digest) DO UPDATE SET""" + _GCRA_SET + "\n"


# The same statement behind a read of the key's row (keel.principals' ``api_keys``, read as
# ``PrincipalStore.authenticate`` reads it): nothing is spent for an unknown or revoked key
_KEY = "SELECT tenant, user_id, role, expires_at FROM api_keys WHERE key_hash = %(key)s AND revoked = 0"
"""The key's row alone (limiting turned off)."""

_AUTH_TAKE = """
WITH k AS (""" + _KEY + """), t AS (
  INSERT INTO api_rate_limits AS r (key_digest, tat, allowed)
  SELECT %(key)s, EXTRACT(EPOCH FROM now())::float8 + %(step)s, TRUE FROM k
  ON CONFLICT (key_digest) DO UPDATE SET""" + _GCRA_SET + """
)
SELECT k.tenant, k.user_id, k.role, k.expires_at, t.allowed, t.wait FROM k LEFT JOIN t ON TRUE
"""


class SharedRateLimiter:
    """GCRA per key in Postgres: one limit for all servers (see the module docstring)."""

    def __init__(self, db: Any, per_minute: float, burst: int | None = None) -> None:
        self.db = db
        self.rate = per_minute / 60.0
        self.burst = burst if burst is not None else max(1, int(per_minute))

    def setup(self) -> SharedRateLimiter:
        # once per database (``Database.executescript``), serialized with the queue's set-up
        self.db.executescript(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK});" + _DDL)
        return self

    def take(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        step = 1.0 / self.rate
        params = {"key": key, "step": step, "tolerance": (self.burst - 1) * step}
        with self.db.pool.connection() as conn:  # named parameters: the pool, not Database's ``?`` SQL
            row = conn.execute(_TAKE, params).fetchone()
        return 0.0 if row["allowed"] else max(float(row["wait"]), 0.001)

    def key_and_take(self, key_hash: str) -> tuple[dict[str, Any] | None, float]:
        """The row of the API key whose digest is ``key_hash`` (``tenant``, ``user_id``, ``role``,
        ``expires_at``; None if unknown or revoked) and, for a key found, :meth:`take` of its
        digest, in one statement.

        The API server's every request did both, one round trip each; here they are one, and
        the key's row is still read on every request, so a revoke is in force at once on every
        server (no cache to invalidate). The caller checks ``expires_at`` on its own clock, as
        :meth:`keel.principals.PrincipalStore.authenticate` does: an expired key's request is
        refused after spending one request of that key's budget, which nobody can use."""
        if self.rate <= 0:
            step = tolerance = 0.0
        else:
            step = 1.0 / self.rate
            tolerance = (self.burst - 1) * step
        params = {"key": key_hash, "step": step, "tolerance": tolerance}
        with self.db.pool.connection() as conn:
            row = conn.execute(_AUTH_TAKE if self.rate > 0 else _KEY, params).fetchone()
        if row is None:
            return None, 0.0
        found = {k: row[k] for k in ("tenant", "user_id", "role", "expires_at")}
        if self.rate <= 0 or row["allowed"]:
            return found, 0.0
        return found, max(float(row["wait"]), 0.001)


def rate_limiter(db: Any, per_minute: float, burst: int | None = None) -> RateLimiter:
    """The limiter for ``db``: shared on Postgres (any number of servers), local on SQLite."""
    if getattr(db, "is_postgres", False):
        return SharedRateLimiter(db, per_minute, burst).setup()
    return LocalRateLimiter(per_minute, burst)
