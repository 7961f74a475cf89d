"""Request-scoped dependencies: runtime, queue, the authenticated principal, correlation ids.

* Auth: an API key in ``x-api-key`` (what ``langgraph_sdk.get_client(url, api_key=KEY)``
  sends) or ``Authorization: Bearer KEY``, looked up hashed in keel's principal store.
  A principal is bound to one tenant and one role; every route filters by its tenant,
  so another tenant's thread looks exactly like a missing one (404).
* Rate limit: per API key, after authentication (:mod:`api.ratelimit`): one budget
  shared by every server on Postgres, a bucket in the process on embedded SQLite. On
  Postgres the key's row is read and its request spent in one statement
  (:meth:`ApiState.admit`): still a read per request, so a revoke is in force at once.
* Correlation id: ``X-Request-ID`` if sane, else generated; echoed on the response,
  stored on runs (and from there in checkpoint metadata, audit rows and traces) and
  added to every log line (:mod:`engine.correlation`).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request

from api.ratelimit import RateLimiter
from engine.correlation import correlation_var
from engine.queue import RunQueue
from engine.runtime import Runtime
from keel.principals import Principal, hash_key

__all__ = [
    "ApiState",
    "get_state",
    "get_runtime",
    "get_queue",
    "get_principal",
    "require_roles",
    "correlation_id",
    "request_correlation_id",
    "new_correlation_id",
    "sane_request_id",
]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_correlation_id() -> str:
    """A fresh correlation id."""
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str:
    """The client's ``X-Request-ID`` if it is a short token, else a fresh id."""
    if value and _REQUEST_ID.match(value):
        return value
    return new_correlation_id()


@dataclass
class ApiState:
    """What the app factory hangs on ``app.state.keel``."""

    runtime: Runtime
    queue: RunQueue
    limiter: RateLimiter
    max_body_bytes: int
    wait_poll_s: float = 0.05
    graphs: list[str] = field(default_factory=list)
    auth_ttl_s: float = 0.0
    """Seconds a key's principal may be reused without reading the database. 0 (the default):
    every request reads the key's row, so a revoked or expired key is refused at once on every
    server; a positive TTL trades that for one read per key per TTL."""
    _auth_cache: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)
    _auth_lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(self, key: str) -> Principal | None:
        """Principal of a key (read on every call unless ``auth_ttl_s`` is positive)."""
        if self.auth_ttl_s <= 0:
            return self.runtime.principals.authenticate(key)
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        with self._auth_lock:
            hit = self._auth_cache.get(digest)
            if hit and hit[0] > now:
                return hit[1]
        p = self.runtime.principals.authenticate(key)
        with self._auth_lock:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[digest] = (now + self.auth_ttl_s, p)
        return p

    def admit(self, key: str) -> tuple[Principal | None, float]:
        """The request's principal (None: an unknown, revoked or expired key) and the rate
        limiter's answer for it (0.0, or the seconds until the key may send again); nothing
        is spent for an unknown or revoked key.

        On Postgres, without a TTL, the key's row is read and its request spent in one
        statement (:meth:`api.ratelimit.SharedRateLimiter.key_and_take`): the key is still
        read on every request, so a revoke or an expiry is refused at once by every server,
        at one round trip instead of two. Otherwise :meth:`authenticate`, then the limiter."""
        digest = hash_key(key)
        combined = getattr(self.limiter, "key_and_take", None)
        if combined is not None and self.auth_ttl_s <= 0:
            row, wait = combined(digest)
            if row is None:
                return None, 0.0
            expires = _utc(row.pop("expires_at"))
            if expires is not None and self.runtime.principals.clock() >= expires:
                return None, 0.0
            return Principal(**row), wait
        principal = self.authenticate(key)
        if principal is None:
            return None, 0.0
        return principal, self.limiter.take(digest)


def _utc(value: str | None) -> datetime | None:
    """A key's ``expires_at`` (ISO 8601; naive means UTC), as the key store reads it."""
    if not value:
        return None
    t = datetime.fromisoformat(value)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


async def get_state(request: Request) -> ApiState:
    """The app's :class:`ApiState`.

    The dependencies that do no I/O are ``async``: FastAPI runs a plain ``def`` dependency in
    its thread pool, a hand-off that costs more CPU than the dependency itself, on every
    request (``bench/serve_cpu.py``)."""
    return request.app.state.keel


async def get_runtime(request: Request) -> Runtime:
    """The process runtime (stores, graphs, checkpointer)."""
    return request.app.state.keel.runtime


async def get_queue(request: Request) -> RunQueue:
    """The run queue."""
    return request.app.state.keel.queue


def correlation_id(request: Request) -> str:
    """This request's correlation id (set by the middleware)."""
    return getattr(request.state, "correlation_id", None) or correlation_var.get() or new_correlation_id()


async def request_correlation_id(request: Request) -> str:
    """:func:`correlation_id` as a route dependency (``async``: no thread-pool hand-off, see
    :func:`get_state`; the console calls the plain function)."""
    return correlation_id(request)


def _key_from(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def get_principal(request: Request) -> Principal:
    """The authenticated caller (401 without a valid key, 429 over the rate limit). A plain
    ``def``: it reads the database, so FastAPI runs it in its thread pool."""
    st: ApiState = request.app.state.keel
    key = _key_from(request)
    if not key:
        raise HTTPException(401, "missing API key: send x-api-key or Authorization: Bearer", headers={"WWW-Authenticate": "Bearer"})
    principal, wait = st.admit(key) if len(key) <= 200 else (None, 0.0)
    if principal is None:
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded for this key", headers={"Retry-After": str(max(1, int(wait + 0.999)))})
    request.state.principal = principal
    return principal


def require_roles(*roles: str) -> Callable[..., Principal]:
    """A dependency that admits only callers with one of ``roles`` (403 otherwise)."""

    def dep(principal: Principal = Depends(get_principal)) -> Principal:  # plain: the console calls it
        if principal.role not in roles:
            raise HTTPException(403, f"requires role {' or '.join(roles)}")
        return principal

    return dep
