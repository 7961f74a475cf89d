"""Signed webhooks: per-tenant subscriptions, an outbox of deliveries, retries, dead letters.

A tenant's admin subscribes a URL to some of :data:`EVENTS`; the secret is generated here
and shown once. When a run waits for approval, escalates, completes or dead-letters, the
worker writes one outbox row per matching subscription right after the state change
(:meth:`WebhookStore.emit`; keyed by ``(subscription, event_id)``, so writing it twice
stores it once). The worker's sweep (:func:`deliver_due`) claims due rows with a conditional
``UPDATE`` (one worker per delivery however many sweep), POSTs the JSON body with
``X-Keel-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`` (the Stripe scheme:
the timestamp is signed with the body, so a captured request cannot be replayed later),
records every attempt, and on failure schedules the next one with exponential backoff and
jitter (:func:`engine.queue.leases.backoff_delay`). After ``max_attempts`` the delivery is
dead (``GET /webhooks/dead-letters``).

Delivery is at least once: a receiver that answered 2xx too late (after our timeout) may
get the same ``X-Keel-Event-Id`` again, which it should de-duplicate on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import datetime, UTC
from typing import Any, Literal

import httpx
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from engine.queue.leases import backoff_delay
from keel.audit import canonical_json
from keel.db import Database, IntegrityError

__all__ = [
    "EVENTS",
    "Event",
    "Delivery",
    "DeliveryPolicy",
    "Subscription",
    "SubscriptionIn",
    "WebhookStore",
    "deliver_due",
    "sign",
    "verify",
    "SIGNATURE_HEADER",
]

Event = Literal["run.awaiting_approval", "run.escalated", "run.completed", "run.dead_lettered"]
EVENTS: tuple[Event, ...] = ("run.awaiting_approval", "run.escalated", "run.completed", "run.dead_lettered")
"""What a subscriber can be told."""

SIGNATURE_HEADER = "X-Keel-Signature"
"""``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>``."""

DeliveryStatus = Literal["pending", "delivered", "dead"]

_DDL = """
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  url TEXT NOT NULL,
  events TEXT NOT NULL,
  secret TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS webhook_subscriptions_tenant ON webhook_subscriptions (tenant, active);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  id TEXT PRIMARY KEY,
  subscription_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  event TEXT NOT NULL,
  event_id TEXT NOT NULL,
  body TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_at DOUBLE PRECISION NOT NULL,
  lease_owner TEXT,
  lease_until DOUBLE PRECISION,
  last_error TEXT,
  created_at TEXT NOT NULL,
  finished_at TEXT,
  UNIQUE (subscription_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_tenant ON webhook_deliveries (tenant, status, created_at);
CREATE TABLE IF NOT EXISTS webhook_attempts (
  delivery_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  at TEXT NOT NULL,
  worker TEXT NOT NULL,
  status_code INTEGER,
  error TEXT,
  duration_ms INTEGER NOT NULL,
  PRIMARY KEY (delivery_id, attempt)
)
"""


def _iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The ``X-Keel-Signature`` value of ``body`` at time ``t`` (now by default)."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``
    (what a receiver does; constant-time comparison)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class SubscriptionIn(BaseModel):
    """``POST /webhooks``: where to send which events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: AnyHttpUrl
    """An http(s) URL receiving a POST per event."""
    events: list[Event] = Field(min_length=1, max_length=len(EVENTS))
    """Which events (at least one, no repeats)."""

    @field_validator("events")
    @classmethod
    def _unique(cls, v: list[Event]) -> list[Event]:
        if len(set(v)) != len(v):
            raise ValueError("events must not repeat")
        return v

    @field_validator("url")
    @classmethod
    def _short(cls, v: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(v)) > 2_000:
            raise ValueError("url longer than 2000 characters")
        return v


class Subscription(BaseModel):
    """A stored subscription (its secret is never read back)."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    url: str
    events: list[str]
    created_by: str
    created_at: str


class Delivery(BaseModel):
    """One event for one subscription, with its attempts so far."""

    model_config = ConfigDict(frozen=True)

    id: str
    subscription_id: str
    tenant: str
    event: str
    event_id: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    created_at: str
    finished_at: str | None
    body: dict[str, Any]
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Every attempt: ``{attempt, at, worker, status_code, error, duration_ms}``."""


class DeliveryPolicy(BaseModel):
    """How hard a delivery is tried (``KEEL_WEBHOOK_*`` settings)."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=6, ge=1, le=50)
    backoff_base_s: float = Field(default=2.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    """A claimed delivery whose worker died is claimable again after this."""


class WebhookStore:
    """Subscriptions, the delivery outbox, attempts and dead letters, in keel's database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def setup(self) -> WebhookStore:
        """Create the tables (idempotent; once per database on Postgres)."""
        self.db.executescript(_DDL)
        return self

    # -- subscriptions ---------------------------------------------------------------------
    def subscribe(self, tenant: str, sub: SubscriptionIn, *, actor: str) -> tuple[Subscription, str]:
        """Store a subscription; returns it and its signing secret (shown to the caller once)."""
        sid, secret, now = uuid.uuid4().hex, "whsec_" + secrets.token_hex(24), _iso()
        self.db.execute(
            "INSERT INTO webhook_subscriptions (id, tenant, url, events, secret, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (sid, tenant, str(sub.url), json.dumps(list(sub.events)), secret, actor, now))
        return Subscription(id=sid, tenant=tenant, url=str(sub.url), events=list(sub.events), created_by=actor,
                            created_at=now), secret

    def subscriptions(self, tenant: str) -> list[Subscription]:
        """The tenant's active subscriptions, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT * FROM webhook_subscriptions WHERE tenant = ? AND active = 1"
                               " ORDER BY created_at, id", (tenant,))
        return [Subscription(id=r["id"], tenant=r["tenant"], url=r["url"], events=json.loads(r["events"]),
                             created_by=r["created_by"], created_at=r["created_at"]) for r in rows]

    def unsubscribe(self, tenant: str, sub_id: str) -> bool:
        """Deactivate a subscription of ``tenant`` (its pending deliveries stop); False if unknown."""
        with self.db.transaction() as tx:
            n = tx.execute("UPDATE webhook_subscriptions SET active = 0 WHERE id = ? AND tenant = ? AND active = 1",
                           (sub_id, tenant))
            if n:
                tx.execute("UPDATE webhook_deliveries SET status = 'dead', last_error = 'subscription deleted',"
                           " finished_at = ? WHERE subscription_id = ? AND status = 'pending'", (_iso(), sub_id))
        return bool(n)

    # -- the outbox --------------------------------------------------------------------------
    def emit(self, tenant: str, event: Event, event_id: str, data: dict[str, Any]) -> int:
        """Queue ``event`` for every active subscription of ``tenant`` to it; returns how many
        deliveries were added (0 for a repeat of ``event_id``: exactly one row per event)."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        added = 0
        # every run ends with an event; most tenants subscribe to none: one read (a round trip,
        # where the transaction below costs three) says so before any transaction is opened
        if self.db.fetchone("SELECT 1 AS any_sub FROM webhook_subscriptions WHERE tenant = ? AND active = 1 LIMIT 1",
                            (tenant,)) is None:
            return 0
        with self.db.transaction() as tx:
            subs = tx.fetchall("SELECT id, events FROM webhook_subscriptions WHERE tenant = ? AND active = 1", (tenant,))
            for s in subs:
                if event not in json.loads(s["events"]):
                    continue
                body = {"id": event_id, "type": event, "tenant": tenant, "created_at": _iso(), "data": data}
                added += tx.execute(
                    "INSERT INTO webhook_deliveries (id, subscription_id, tenant, event, event_id, body, status,"
                    " next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
                    " ON CONFLICT (subscription_id, event_id) DO NOTHING",
                    (uuid.uuid4().hex, s["id"], tenant, event, event_id, canonical_json(body), time.time(), _iso()))
        return added

    def claim_due(self, worker_id: str, *, lease_s: float, limit: int = 20,
                  now: float | None = None) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due deliveries for ``worker_id`` (each row to one worker only:
        a conditional ``UPDATE`` that a concurrent claimer's changes make match nothing)."""
        now = time.time() if now is None else now
        with self.db.transaction() as tx:
            cands = tx.fetchall(
                "SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ?"
                " AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_at LIMIT ?", (now, now, limit))
        claimed = []
        for c in cands:
            n = self.db.execute(
                "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ? WHERE id = ? AND status = 'pending'"
                " AND next_at <= ? AND (lease_until IS NULL OR lease_until < ?)",
                (worker_id, now + lease_s, c["id"], now, now))
            if n:
                row = self.db.fetchone(
                    "SELECT d.*, s.url, s.secret FROM webhook_deliveries d JOIN webhook_subscriptions s"
                    " ON s.id = d.subscription_id WHERE d.id = ?", (c["id"],))
                if row is not None:
                    claimed.append(row)
        return claimed

    def record_attempt(self, row: dict[str, Any], worker_id: str, *, status_code: int | None, error: str | None,
                       duration_ms: int, policy: DeliveryPolicy) -> DeliveryStatus:
        """Store one attempt and the delivery's next state (delivered, retried later, dead);
        a worker that lost its lease records the attempt but changes nothing else."""
        ok = error is None and status_code is not None and 200 <= status_code < 300
        attempt = int(row["attempts"]) + 1
        now_iso = _iso()
        with self.db.transaction() as tx:
            try:
                tx.execute("INSERT INTO webhook_attempts (delivery_id, attempt, at, worker, status_code, error,"
                           " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (row["id"], attempt, now_iso, worker_id, status_code, (error or "")[:500] or None, duration_ms))
            except IntegrityError:
                return "pending"  # another worker recorded this attempt (our lease had expired)
            if ok:
                status: DeliveryStatus = "delivered"
                next_at = float(row["next_at"])
            elif attempt >= policy.max_attempts:
                status = "dead"
                next_at = float(row["next_at"])
            else:
                status = "pending"
                next_at = time.time() + backoff_delay(attempt, policy.backoff_base_s, policy.backoff_cap_s)
            last_error = None if ok else (error or f"HTTP {status_code}")[:500]
            tx.execute(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_at = ?, lease_owner = NULL,"
                " lease_until = NULL, last_error = ?, finished_at = ? WHERE id = ? AND lease_owner = ?",
                (status, attempt, next_at, last_error, now_iso if status != "pending" else None, row["id"], worker_id))
        return status

    # -- reads ------------------------------------------------------------------------------
    def deliveries(self, tenant: str, *, status: DeliveryStatus | None = None, limit: int = 50,
                   offset: int = 0) -> list[Delivery]:
        """The tenant's deliveries (newest first), each with its attempts."""
        sql, params = "SELECT * FROM webhook_deliveries WHERE tenant = ?", [tenant]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, params)
            out = []
            for r in rows:
                hist = tx.fetchall("SELECT attempt, at, worker, status_code, error, duration_ms FROM webhook_attempts"
                                   " WHERE delivery_id = ? ORDER BY attempt", (r["id"],))
                out.append(Delivery(id=r["id"], subscription_id=r["subscription_id"], tenant=r["tenant"],
                                    event=r["event"], event_id=r["event_id"], status=r["status"],
                                    attempts=r["attempts"], last_error=r["last_error"], created_at=r["created_at"],
                                    finished_at=r["finished_at"], body=json.loads(r["body"]), history=hist))
        return out

    def dead_letters(self, tenant: str, *, limit: int = 50, offset: int = 0) -> list[Delivery]:
        """Deliveries of ``tenant`` that kept failing (``GET /webhooks/dead-letters``)."""
        return self.deliveries(tenant, status="dead", limit=limit, offset=offset)


def deliver_due(store: WebhookStore, worker_id: str, policy: DeliveryPolicy, *, limit: int = 20,
                client: httpx.Client | None = None) -> int:
    """Claim and attempt the due deliveries once each; returns how many were attempted.

    Called by the worker's periodic sweep (:func:`engine.review.sweep`)."""
    rows = store.claim_due(worker_id, lease_s=max(policy.lease_s, policy.timeout_s * 2), limit=limit)
    if not rows:
        return 0
    own = client is None
    http = client or httpx.Client(timeout=policy.timeout_s, follow_redirects=False)
    try:
        for row in rows:
            body = row["body"].encode()
            headers = {"content-type": "application/json", SIGNATURE_HEADER: sign(row["secret"], body),
                       "X-Keel-Event": row["event"], "X-Keel-Event-Id": row["event_id"],
                       "X-Keel-Delivery": row["id"], "user-agent": "keel-webhooks/1"}
            t0 = time.monotonic()
            code: int | None = None
            err: str | None = None
            try:
                code = http.post(row["url"], content=body, headers=headers).status_code
            except httpx.HTTPError as e:
                err = f"{type(e).__name__}: {e}"
            store.record_attempt(row, worker_id, status_code=code, error=err,
                                 duration_ms=int((time.monotonic() - t0) * 1000), policy=policy)
    finally:
        if own:
            http.close()
    return len(rows)
