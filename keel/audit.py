"""Tamper-evident audit log: every route decision, policy decision, approval and tool call.

Rows are hash-chained per tenant: each row stores ``prev_hash`` and
``row_hash = sha256(prev_hash || canonical(row))``. Changing or deleting a row in the
database breaks the chain at that row, which :meth:`AuditLog.verify` reports. Appends
to one tenant's chain are serialized by locking the tenant's chain-head row, so two
workers writing at once still produce one linear chain.

Erasure (``keel forget``): a row's hash covers its data through the data's SHA-256
(``canonical(row)`` holds ``{"sha256": digest}`` in place of ``data``), so
:meth:`AuditLog.erase_payloads` can replace a row's data with a *tombstone* that keeps only
that digest and the chain still verifies. Every erasure appends an ``admin`` row listing
the rows it tombstoned, and verification refuses a tombstone no such row lists: altering a
live row, a tombstone's digest, or turning a live row into a tombstone behind the log's
back are all detected. Rows written before digests were hashed (``sha256(prev ||
canonical(row with data))``) still verify; they cannot be tombstoned verifiably.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, UTC
from collections.abc import Callable, Collection
from typing import Any, Literal

from pydantic import BaseModel

from keel.db import Database, IntegrityError

__all__ = ["AuditLog", "AuditKind", "AuditRow", "ChainReport", "Redactor", "canonical_json", "is_tombstone",
           "ERASE_ACTION"]

AuditKind = Literal[
    "run_started",
    "route_decision",
    "injection_screen",
    "plan_proposed",
    "policy_decision",
    "approval_requested",
    "approval",
    "tool_call",
    "verification",
    "run_finished",
    "model_call",
    "admin",
    "budget_alert",
    "escalation",
    "webhook",
    "state_update",
    "memory_write",
    "release",
]
"""What an audit row records (``escalation``: a take-over or resolution; ``webhook``: a
subscription added or removed; ``state_update``: a thread's state written from outside a run;
``memory_write``: a proposed long-term memory item accepted or rejected, by class and digest;
``release``: a shadow or canary release started, rolled back, stopped or promoted, in the
service-wide chain ``_system``: ``engine.releases``)."""

Redactor = Callable[[dict[str, Any]], dict[str, Any]]
"""Takes an event's data and returns it with personal data and secrets removed
(``guards.dlp.redact`` in keel's wiring)."""

GENESIS = "0" * 64
"""``prev_hash`` of a tenant's first row."""


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept. Used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class AuditRow(BaseModel):
    """One audit entry as stored."""

    seq: int
    """Position in the tenant's chain (1-based)."""
    tenant: str
    """Tenant whose chain holds the row."""
    thread_id: str | None
    """Run thread, if the event belongs to one."""
    kind: str
    """An :data:`AuditKind`."""
    actor: str
    """Who acted: a user id, ``system`` or ``model:<provider>``."""
    at: str
    """ISO-8601 UTC time."""
    correlation_id: str | None
    """Request/run correlation id."""
    data: dict[str, Any]
    """Event details, DLP-redacted before they are stored."""
    prev_hash: str
    """Hash of the previous row of the chain."""
    row_hash: str
    """Hash over ``prev_hash`` and this row's content."""


class ChainReport(BaseModel):
    """Result of verifying one tenant's chain."""

    tenant: str
    """Tenant checked."""
    ok: bool
    """True when every row hashes correctly and the sequence has no gap."""
    rows: int
    """Rows checked."""
    first_bad_seq: int | None = None
    """First row where the chain breaks."""
    problem: str | None = None
    """What is wrong there."""


ERASE_ACTION = "erase_payloads"
"""``data.action`` of the ``admin`` row an erasure appends (``data.erased_seqs``: the rows it tombstoned)."""

_TOMBSTONE = "_erased"


def _row_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The first scheme: the data itself hashed (rows written before digests; verify only)."""
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def _data_digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def _digest_hash(prev_hash: str, body: dict[str, Any], digest: str) -> str:
    """The row hash over the data's digest (what :meth:`AuditLog.append` writes)."""
    return _row_hash(prev_hash, {**body, "data": {"sha256": digest}})


def _tombstone(digest: str) -> dict[str, Any]:
    return {_TOMBSTONE: True, "sha256": digest}


def is_tombstone(data: Any) -> bool:
    """Whether an audit row's data is an erasure tombstone (only the digest kept)."""
    return (isinstance(data, dict) and set(data) == {_TOMBSTONE, "sha256"} and data[_TOMBSTONE] is True
            and isinstance(data["sha256"], str) and len(data["sha256"]) == 64)


_DDL = """
CREATE TABLE IF NOT EXISTS audit_head (
  tenant TEXT PRIMARY KEY,
  seq BIGINT NOT NULL,
  row_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
  tenant TEXT NOT NULL,
  seq BIGINT NOT NULL,
  thread_id TEXT,
  kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  at TEXT NOT NULL,
  correlation_id TEXT,
  data TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  row_hash TEXT NOT NULL,
  PRIMARY KEY (tenant, seq)
);
CREATE INDEX IF NOT EXISTS audit_log_thread ON audit_log (tenant, thread_id)
"""


_INSERT_ROW = ("INSERT INTO audit_log (tenant, seq, thread_id, kind, actor, at, correlation_id, data, prev_hash,"
               " row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class AuditLog:
    """Append-only, hash-chained audit rows in the keel database.

    ``redact`` is required, with no default: what counts as personal data is the DLP
    guard's decision (``guards.dlp``, a layer above this one), and an audit log built
    without it must not silently store customers' data unredacted.
    """

    def __init__(self, db: Database, *, redact: Redactor) -> None:
        self.db = db
        self.redact = redact

    def setup(self) -> None:
        """Create the tables (idempotent)."""
        self.db.executescript(_DDL)

    def append(
        self,
        tenant: str,
        kind: AuditKind,
        *,
        actor: str,
        data: dict[str, Any] | None = None,
        thread_id: str | None = None,
        correlation_id: str | None = None,
        at: datetime | None = None,
    ) -> AuditRow:
        """Append one row to the tenant's chain (redacted, hashed, serialized per tenant)."""
        at_s = (at or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
        payload = self.redact(data or {})
        if is_tombstone(payload):  # only an erasure writes tombstones
            payload = {"data": payload}
        for _ in range(5):
            try:
                return self._append(tenant, kind, actor, payload, thread_id, correlation_id, at_s)
            except IntegrityError:
                continue  # a concurrent first append created the head row; retry under its lock
        raise RuntimeError("audit chain contention")

    def _append(self, tenant, kind, actor, payload, thread_id, correlation_id, at_s) -> AuditRow:
        lock = " FOR UPDATE" if self.db.is_postgres else ""
        with self.db.transaction() as tx:
            head = tx.fetchone(f"SELECT seq, row_hash FROM audit_head WHERE tenant = ?{lock}", (tenant,))
            seq, prev = (head["seq"], head["row_hash"]) if head else (0, GENESIS)
            seq += 1
            body = {
                "seq": seq,
                "tenant": tenant,
                "thread_id": thread_id,
                "kind": kind,
                "actor": actor,
                "at": at_s,
                "correlation_id": correlation_id,
                "data": payload,
            }
            row_hash = _digest_hash(prev, body, _data_digest(payload))
            row = (tenant, seq, thread_id, kind, actor, at_s, correlation_id, canonical_json(payload), prev, row_hash)
            move = ("UPDATE audit_head SET seq = ?, row_hash = ? WHERE tenant = ?", (seq, row_hash, tenant)) if head else (
                "INSERT INTO audit_head (tenant, seq, row_hash) VALUES (?, ?, ?)", (tenant, seq, row_hash))
            if self.db.is_postgres:
                # the head and the row in one statement (a data-modifying CTE): one round trip
                # fewer for every audited decision, about ten a run
                tx.execute(f"WITH head AS ({move[0]}) {_INSERT_ROW}", (*move[1], *row))
            else:
                tx.execute(*move)
                tx.execute(_INSERT_ROW, row)
        return AuditRow(**body, prev_hash=prev, row_hash=row_hash)

    def list(self, tenant: str, thread_id: str | None = None, limit: int = 1000, offset: int = 0) -> list[AuditRow]:
        """Rows of a tenant (optionally one thread), oldest first."""
        sql = "SELECT * FROM audit_log WHERE tenant = ?"
        params: list[Any] = [tenant]
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        sql += " ORDER BY seq LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self.db.transaction() as tx:
            rows = tx.fetchall(sql, params)
        return [AuditRow(**{**r, "data": json.loads(r["data"])}) for r in rows]

    def erase_payloads(self, tenant: str, seqs: Collection[int], *, actor: str,
                       note: dict[str, Any] | None = None) -> AuditRow | None:
        """Replace the data of rows ``seqs`` with tombstones keeping each one's digest, and
        append the ``admin`` row that records the erasure (with ``note``), in one transaction.

        Rows already tombstoned and erasure records themselves are left as they are; so are
        rows of the first hashing scheme, which could not verify without their data: the
        erasure record lists them as ``kept_seqs``. Returns the erasure record (its
        ``erased_seqs``: the rows tombstoned now; a second erasure of the same rows tombstones
        nothing), or None for a tenant without a chain.
        """
        at_s = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        lock = " FOR UPDATE" if self.db.is_postgres else ""
        wanted = sorted({int(s) for s in seqs})
        done: list[int] = []
        kept: list[int] = []
        with self.db.transaction() as tx:
            head = tx.fetchone(f"SELECT seq, row_hash FROM audit_head WHERE tenant = ?{lock}", (tenant,))
            if head is None:
                return None
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                rows = tx.fetchall(f"SELECT * FROM audit_log WHERE tenant = ? AND seq IN ({', '.join('?' * len(chunk))})",
                                   [tenant, *chunk])
                for r in rows:
                    data = json.loads(r["data"])
                    if is_tombstone(data) or (r["kind"] == "admin" and data.get("action") == ERASE_ACTION):
                        continue
                    digest = _data_digest(data)
                    body = {k: r[k] for k in ("seq", "tenant", "thread_id", "kind", "actor", "at", "correlation_id")}
                    if _digest_hash(r["prev_hash"], body, digest) != r["row_hash"]:
                        kept.append(int(r["seq"]))  # first scheme (or already broken): erasing it would hide that
                        continue
                    tx.execute("UPDATE audit_log SET data = ? WHERE tenant = ? AND seq = ?",
                               (canonical_json(_tombstone(digest)), tenant, r["seq"]))
                    done.append(int(r["seq"]))
            done.sort()
            payload = self.redact({**(note or {}), "action": ERASE_ACTION, "erased_seqs": done,
                                   **({"kept_seqs": sorted(kept)} if kept else {})})
            seq, prev = head["seq"] + 1, head["row_hash"]
            body = {"seq": seq, "tenant": tenant, "thread_id": None, "kind": "admin", "actor": actor, "at": at_s,
                    "correlation_id": None, "data": payload}
            row_hash = _digest_hash(prev, body, _data_digest(payload))
            tx.execute("UPDATE audit_head SET seq = ?, row_hash = ? WHERE tenant = ?", (seq, row_hash, tenant))
            tx.execute(
                "INSERT INTO audit_log (tenant, seq, thread_id, kind, actor, at, correlation_id, data, prev_hash, row_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, seq, None, "admin", actor, at_s, None, canonical_json(payload), prev, row_hash),
            )
        return AuditRow(**body, prev_hash=prev, row_hash=row_hash)

    def verify(self, tenant: str) -> ChainReport:
        """Recompute the tenant's chain; report the first row that does not match.

        A row verifies by its data's digest (or, written before digests, by its data); a
        tombstone by the digest it kept, and only if a later erasure row lists it."""
        with self.db.transaction() as tx:
            rows = tx.fetchall("SELECT * FROM audit_log WHERE tenant = ? ORDER BY seq", (tenant,))
            head = tx.fetchone("SELECT seq, row_hash FROM audit_head WHERE tenant = ?", (tenant,))
        prev = GENESIS
        tombstones: list[int] = []
        recorded: set[int] = set()
        for i, r in enumerate(rows, start=1):
            if r["seq"] != i:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="row missing")
            try:
                data = json.loads(r["data"])
            except ValueError:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="data unreadable")
            body = {k: r[k] for k in ("seq", "tenant", "thread_id", "kind", "actor", "at", "correlation_id")}
            hashes = {_row_hash(prev, {**body, "data": data}), _digest_hash(prev, body, _data_digest(data))}
            if is_tombstone(data):
                hashes.add(_digest_hash(prev, body, data["sha256"]))
                tombstones.append(i)
            if r["prev_hash"] != prev or r["row_hash"] not in hashes:
                return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=i, problem="hash mismatch")
            if r["kind"] == "admin" and isinstance(data, dict) and data.get("action") == ERASE_ACTION:
                recorded.update(s for s in data.get("erased_seqs") or () if isinstance(s, int) and s < i)
            prev = r["row_hash"]
        if head is not None and (head["seq"] != len(rows) or head["row_hash"] != prev):
            return ChainReport(
                tenant=tenant, ok=False, rows=len(rows), first_bad_seq=len(rows) + 1, problem="rows missing at the end"
            )
        unrecorded = [s for s in tombstones if s not in recorded]
        if unrecorded:
            return ChainReport(tenant=tenant, ok=False, rows=len(rows), first_bad_seq=unrecorded[0],
                               problem="erased without an erasure record")
        return ChainReport(tenant=tenant, ok=True, rows=len(rows))
